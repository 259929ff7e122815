"""Loaders, schema normalization and row-level validation.  Run: .venv/bin/python -m pytest tests/test_data.py"""

import csv
import json

import pytest

from ftlab import data
from ftlab.data import formats

Q = [f"What does `mod.f{i}` do?" for i in range(6)]
A = [f"Return the answer number {i} for the caller." for i in range(6)]


def _messages_rows():
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in zip(Q, A)]


FORMATS = {
    "messages": _messages_rows,
    "sharegpt": lambda: [
        {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in zip(Q, A)
    ],
    "alpaca": lambda: [{"instruction": q, "input": "", "output": a} for q, a in zip(Q, A)],
    "prompt_completion": lambda: [{"prompt": q, "completion": a} for q, a in zip(Q, A)],
}


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_every_format_in_every_file_type_normalizes_to_the_same_messages(tmp_path, fmt, ext):
    rows, rejected, used = data.load(_write(tmp_path / f"d{ext}", FORMATS[fmt]()))
    assert rejected == [] and used == f"{fmt} (6)"
    assert [r.data["messages"] for r in rows] == [m["messages"] for m in _messages_rows()]
    assert [r.line for r in rows] == [1, 2, 3, 4, 5, 6]


def test_csv_alpaca_and_prompt_completion(tmp_path):
    for fmt in ("alpaca", "prompt_completion"):
        rows, rejected, used = data.load(_write(tmp_path / f"{fmt}.csv", FORMATS[fmt]()))
        assert not rejected and len(rows) == 6 and rows[0].line == 2  # line 1 is the header
        assert rows[0].data["messages"][1]["content"] == A[0]


def test_a_csv_row_with_more_or_fewer_cells_than_its_header_is_rejected_with_its_line(tmp_path):
    """An unquoted comma inside a field splits it: the spare cell would be thrown away and the answer cut, so the
    row is rejected with its line number and both cells kept in the record; a short row is rejected the same way."""
    p = tmp_path / "a.csv"
    p.write_text(
        "instruction,output\n"
        "Name a fruit,apple\n"
        "Add 2 and 3, then double it,10\n"  # an unquoted comma: three cells
        '"Quoted, fine",yes\n'
        "Only one cell\n"
    )
    rows, rejected, _ = data.load(p)
    assert [r.line for r in rows] == [2, 4] and rows[1].data["messages"][0]["content"] == "Quoted, fine"
    assert [(r.line, r.reason) for r in rejected] == [(3, "csv_cell_count"), (5, "csv_cell_count")]
    assert rejected[0].detail.startswith("3 cells where the header has 2") and "quote" in rejected[0].detail
    assert rejected[0].raw == {"instruction": "Add 2 and 3", "output": " then double it", "": ["10"]}
    assert rejected[1].detail == "1 cell where the header has 2: missing cells for ['output']"
    assert rejected[0].source == str(p) and "csv_cell_count" in formats.REASONS


def test_a_semicolon_separated_csv_is_read_with_its_delimiter_and_says_so(tmp_path, capsys):
    p = tmp_path / "s.csv"
    p.write_text("instruction;output\nName a fruit, any fruit;apple, or a pear\n")
    rows, rejected, _ = data.load(p)
    assert not rejected and rows[0].data["messages"][1]["content"] == "apple, or a pear"
    assert "read with ';' as delimiter" in capsys.readouterr().out


def test_keys_inside_a_turn_are_reported_and_a_training_flag_fails_the_row(tmp_path):
    """A turn's key the reader does not use is never dropped silently: it is kept beside the row and reported per
    key; a key that says whether the turn is trained (OpenAI's weight, axolotl's train) fails the row, since every
    assistant turn would be trained anyway."""
    turns = [{"role": "user", "content": "Hi", "name": "ann"}, {"role": "assistant", "content": "Hello"}]
    masked = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Wrong", "weight": 0}]
    p = _write(tmp_path / "t.jsonl", [{"messages": turns}, {"messages": masked}])
    rows, rejected, _ = data.load(p)
    assert len(rows) == 1 and rows[0].extra == {"messages[].name": ["ann"]}
    assert [(r.line, r.reason) for r in rejected] == [(2, "training_key")] and "'weight' = 0" in rejected[0].detail
    note = data.brief_warnings(data.content_warnings(rows))
    assert note == "note: field 'messages[].name' in 1 rows is kept beside the row, not trained"


def test_honoured_turn_flags_keep_an_unwanted_answer_as_context_with_no_loss(tmp_path):
    """turn_flags="honour": OpenAI's weight 0/1 and axolotl's train true/false decide which answers are trained. A turn
    marked not trained stays in the conversation and gets no loss (the mask has no token of it); every other answer is
    trained as before. What cannot be honoured fails its row with its line: a last answer not trained, a user turn
    marked trained, a key whose meaning differs between tools, a value that is neither 0/1 nor true/false."""
    from ftlab import models
    from ftlab.data import template_audit

    tok = models.load_tokenizer(models.TINY_MODEL)
    good = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "Five, I think.", "weight": 0},
        {"role": "user", "content": "Check again."},
        {"role": "assistant", "content": "Four.", "weight": 1},
    ]
    share = {
        "system": "Be brief.",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Go away.", "train": False},
            {"from": "human", "value": "Please?"},
            {"from": "gpt", "value": "Hello!"},
        ],
    }
    last_off = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "train": False}]
    user_on = [{"role": "user", "content": "Q", "train": True}, {"role": "assistant", "content": "A"}]
    mask_key = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "mask": 1}]
    odd = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "weight": 0.5}]
    recs = [{"messages": good}, share, {"messages": last_off}, {"messages": user_on}]
    p = _write(tmp_path / "t.jsonl", recs + [{"messages": mask_key}, {"messages": odd}])
    rows, rejected, _ = data.load(p, turn_flags="honour")
    assert [r.line for r in rows] == [1, 2] and not rows[0].extra and not rows[1].extra  # the flags were read, not kept
    assert [m.get("train", True) for m in rows[0].data["messages"]] == [True, False, True, True]
    assert [m.get("train", True) for m in rows[1].data["messages"]] == [True, True, False, True, True]  # system first
    assert [(r.line, r.reason) for r in rejected] == [(n, "training_key") for n in (3, 4, 5, 6)]
    assert "the last answer is marked not trained" in rejected[0].detail
    assert "is a user turn marked trained" in rejected[1].detail
    assert "'mask' = 1" in rejected[2].detail and "rename it to 'train'" in rejected[2].detail
    assert "'weight' = 0.5: expected 0 or 1" in rejected[3].detail
    # the loss mask: the flagged answer's tokens are context, the last answer is trained as without flags
    honoured = template_audit.encode(tok, rows[0].data["messages"])
    plain = template_audit.encode(tok, [{k: v for k, v in m.items() if k != "train"} for m in rows[0].data["messages"]])
    assert honoured.input_ids == plain.input_ids and 0 < sum(honoured.assistant_masks) < sum(plain.assistant_masks)
    trained = tok.decode([t for t, m in zip(honoured.input_ids, honoured.assistant_masks, strict=True) if m])
    assert "Four." in trained and "Five" not in trained
    from ftlab.train import sft  # stage 02 trains from stage 01's rows with the same mask

    assert sft.dataset(tok, [rows[0].to_json()], 256)[0]["assistant_masks"] == honoured.assistant_masks
    # by default the same file trains nothing it should not: the flagged rows fail, saying how to honour them
    _, rejected, _ = data.load(p)
    assert len(rejected) == 6 and "turn_flags='honour'" in rejected[0].detail
    with pytest.raises(data.DataError, match=r"turn_flags must be one of \['reject', 'honour'\], got 'yes'"):
        data.load(p, turn_flags="yes")


def test_a_pair_given_as_two_whole_conversations_is_the_same_pair_as_its_explicit_prompt_layout(tmp_path):
    """TRL's implicit-prompt layout (Anthropic HH's shape, two whole conversations): the turns both share are the
    prompt, the last answers are chosen and rejected; it reads to exactly the explicit layout's pair. Conversations
    that differ before their answers, and a prompt/chosen row whose answer list repeats another conversation
    (UltraFeedback's shape, where it would lose turns), are rejected with their lines."""
    convo = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    convo += [{"role": "user", "content": "2+2?"}]
    good, bad = {"role": "assistant", "content": "4."}, {"role": "assistant", "content": "5."}
    hh = {"chosen": [*convo, good], "rejected": [*convo, bad]}
    explicit = {"prompt": convo, "chosen": "4.", "rejected": "5."}
    ultra = {"prompt": "2+2?", "chosen": [convo[2], good], "rejected": [convo[2], bad]}  # UltraFeedback binarized
    ultra_off = {"prompt": "2+2?", "chosen": [convo[0], good], "rejected": [convo[2], bad]}
    forked = {"chosen": [*convo, good], "rejected": [convo[0], {"role": "assistant", "content": "Hey."}, convo[2], bad]}
    p = _write(tmp_path / "p.jsonl", [hh, explicit, ultra, ultra_off, forked])
    rows, rejected, used = data.load(p, kind="prefs")
    assert [r.line for r in rows] == [1, 2, 3] and "transcript_preference (1)" in used
    assert rows[0].data == rows[1].data and rows[0].data["prompt"] == convo
    assert rows[2].data == {"prompt": [convo[2]], "chosen": [good], "rejected": [bad]}
    assert [(r.line, r.reason) for r in rejected] == [(4, "transcripts_differ"), (5, "transcripts_differ")]
    assert "chosen repeats the conversation before its answer: turn 0 differs" in rejected[0].detail
    assert "differ at turn 1, before their last answers" in rejected[1].detail


def test_a_file_with_renamed_keys_and_roles_trains_the_same_tokens_as_the_native_layout(tmp_path):
    """data_fields / data_roles (stage 01): a support-chat export with `conversation` lists of {speaker, text} and its
    own role names reads as the `messages` layout; the rows encode to exactly the tokens and loss mask of the same
    rows written natively. A name no row has fails the file (a typo maps nothing); a rename onto a key the row already
    has fails that row, and rejected.jsonl keeps the row as it was in the file."""
    from ftlab import models
    from ftlab.core import params
    from ftlab.data import template_audit

    chats = [
        [
            ("customer", "My order is late."),
            ("agent", "Sorry! It ships today."),
            ("customer", "Thanks"),
            ("agent", "Welcome."),
        ],
        [("system", "Be brief."), ("customer", "Refund?"), ("agent", "Within 30 days.")],
    ]
    roles = {"customer": "user", "agent": "assistant"}
    mapped = [{"conversation": [{"speaker": s, "text": t} for s, t in c], "ticket": i} for i, c in enumerate(chats)]
    native = [
        {"messages": [{"role": roles.get(s, s), "content": t} for s, t in c], "ticket": i} for i, c in enumerate(chats)
    ]
    clash = {"conversation": mapped[0]["conversation"], "messages": []}
    fields = {"conversation": "messages", "speaker": "role", "text": "content"}
    a = _write(tmp_path / "mapped.jsonl", [*mapped, clash])
    rows, rejected, used = data.load(a, renames=data.Renames(fields, roles))
    want, _, _ = data.load(_write(tmp_path / "native.jsonl", native))
    assert used == "messages (2)" and [r.data for r in rows] == [r.data for r in want]
    assert [r.extra for r in rows] == [{"ticket": 0}, {"ticket": 1}]  # the other keys are still reported, not lost
    tok = models.load_tokenizer(models.TINY_MODEL)
    for got, ref in zip(rows, want, strict=True):
        e, n = template_audit.encode(tok, got.data["messages"]), template_audit.encode(tok, ref.data["messages"])
        assert (e.input_ids, e.assistant_masks) == (n.input_ids, n.assistant_masks) and sum(e.assistant_masks) > 0
    assert [(r.line, r.reason) for r in rejected] == [(3, "unknown_schema")]
    assert "renames 'conversation' to 'messages', and the row has 'messages' too" in rejected[0].detail
    assert rejected[0].raw == clash  # as it is in the file
    with pytest.raises(data.DataError, match=r"name field 'speeker', which no row has .*'conversation\[\]\.speaker'"):
        data.load(a, renames=data.Renames({**fields, "speeker": "role"}, roles))
    data.load(a, renames=data.Renames({**fields, "speeker": "role"}, roles, require_all=False))  # a second file
    with pytest.raises(ValueError, match="roles map onto system, user or assistant, found {'agent': 'bot'}"):
        params.SPECS["01_prepare_data"]["data_roles"].check({"agent": "bot"})


def test_datasets_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_list(_messages_rows()).save_to_disk(str(tmp_path / "ds"))
    rows, rejected, used = data.load(tmp_path / "ds")
    assert len(rows) == 6 and used == "messages (6)"


def test_plain_text_is_one_assistant_turn(tmp_path):
    rows, _, used = data.load(_write(tmp_path / "t.jsonl", [{"text": "Some corpus text to continue."}]))
    assert rows[0].data["messages"] == [{"role": "assistant", "content": "Some corpus text to continue."}]


def test_alpaca_input_and_system_are_kept():
    d, _ = data.normalize({"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be terse."})
    assert d["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Sum\n\n1 2"},
        {"role": "assistant", "content": "3"},
    ]


def test_explicit_format_overrides_detection_and_extra_fields_are_kept():
    rec = {"prompt": "q?", "completion": "an answer", "text": "ignored by this format", "id": 7}
    d, extra = data.normalize(rec, "prompt_completion")
    assert d["messages"][1]["content"] == "an answer" and extra == {"text": "ignored by this format", "id": 7}
    with pytest.raises(data.RowError, match="needs fields"):
        data.normalize({"text": "x"}, "alpaca")


GOOD = '{"messages": [{"role": "user", "content": "q%d"}, {"role": "assistant", "content": "a%d"}]}'
BAD_LINES = {
    "invalid_json": '{"messages": [',
    "wrong_type": '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}',
    "empty_field": '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}',
    "nul_byte": '{"messages": [{"role": "user", "content": "q\\u0000"}, {"role": "assistant", "content": "a"}]}',
    "control_chars": '{"messages": [{"role": "user", "content": "q\\u0007"}, {"role": "assistant", "content": "a"}]}',
    "unknown_role": '{"messages": [{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}]}',
    "turn_order": '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}',
    "no_final_assistant": '{"messages": [{"role": "user", "content": "q"}]}',
    "unknown_schema": '{"question": "q", "answer": "a"}',
}


@pytest.mark.parametrize("reason", list(BAD_LINES) + ["invalid_utf8", "lone_surrogate"])
def test_each_bad_row_is_rejected_with_its_line_and_nothing_else_is_lost(tmp_path, reason):
    # 3 good rows, the bad one on line 3, 2 more good rows -> 5 accepted, 1 rejected at line 3
    good = [(GOOD % (i, i)).encode() for i in range(5)]
    if reason == "invalid_utf8":
        bad = b'{"messages": [{"role": "user", "content": "q\xff"}]}'
    elif reason == "lone_surrogate":
        bad = b'{"messages": [{"role": "user", "content": "q\\ud800"}, {"role": "assistant", "content": "a"}]}'
    else:
        bad = BAD_LINES[reason].encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(good[:2] + [bad] + good[2:]) + b"\n")
    rows, rejected, _ = data.load(path)
    assert [r.line for r in rows] == [1, 2, 4, 5, 6]
    assert len(rejected) == 1 and rejected[0].line == 3
    assert rejected[0].reason == ("invalid_utf8" if reason == "lone_surrogate" else reason)
    assert rejected[0].raw  # the raw row is kept for the report


def test_a_file_in_a_legacy_encoding_is_named_with_the_command_that_converts_it(tmp_path):
    """Windows-1252 (Western) and GB18030 (Chinese) text: each bad line says what it looks like and how to convert
    it; the rows that are valid UTF-8 are kept. A CSV and a .json file are read whole and say the same."""
    row = {"instruction": "Qu'est-ce qu'un café crème ? Déjà vu, naïveté, résumé.", "output": "Un café au lait."}
    for enc, name in (("cp1252", "WINDOWS-1252"), ("gb18030", "GB18030")):
        text = row if enc == "cp1252" else {"instruction": "这是一个测试问题，请回答。", "output": "这是答案。"}
        bad = json.dumps(text, ensure_ascii=False).encode(enc)
        path = tmp_path / f"{enc}.jsonl"
        path.write_bytes(b"\n".join([(GOOD % (0, 0)).encode(), bad, bad, (GOOD % (1, 1)).encode()]) + b"\n")
        rows, rejected, _ = data.load(path)
        assert [r.line for r in rows] == [1, 4] and [(r.line, r.reason) for r in rejected] == [
            (2, "invalid_utf8"),
            (3, "invalid_utf8"),
        ]
        assert f"it looks like {name}" in rejected[0].detail and f"iconv -f {name} -t UTF-8" in rejected[0].detail
    (tmp_path / "w.csv").write_bytes("instruction,output\nCafé crème déjà vu ?,Oui, très.\n".encode("cp1252"))
    with pytest.raises(data.DataError, match="invalid UTF-8 at line 2 .*it looks like WINDOWS-1252"):
        data.load(tmp_path / "w.csv")
    (tmp_path / "w.json").write_bytes(json.dumps([row], ensure_ascii=False).encode("cp1252"))
    with pytest.raises(data.DataError, match="not valid UTF-8 JSON .*it looks like WINDOWS-1252.*iconv"):
        data.load(tmp_path / "w.json")


def test_rows_of_no_known_layout_list_every_layout_once_in_the_summary(tmp_path):
    path = _write(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}] * 4)
    _, rejected, _ = data.load(path)
    assert [r.reason for r in rejected] == ["unknown_schema"] * 4 and "['answer', 'question']" in rejected[0].detail
    summary = data.rejection_summary(rejected)
    assert all(f"{f.name} {list(f.required)}" in summary for f in formats.FORMATS)  # whole, not cut
    assert summary.count(formats.layouts()) == 1  # once per reason, not once per row


def test_bom_crlf_and_blank_lines_are_fine(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (GOOD % (0, 0)).encode() + b"\r\n\r\n" + (GOOD % (1, 1)).encode() + b"\r\n")
    rows, rejected, _ = data.load(path)
    assert not rejected and [r.line for r in rows] == [1, 3]


def test_sharegpt_unknown_role_and_preference_checks():
    with pytest.raises(data.RowError) as e:
        data.normalize({"conversations": [{"from": "narrator", "value": "x"}, {"from": "gpt", "value": "y"}]})
    assert e.value.reason == "unknown_role"  # tool roles have their own reason (tests/test_layouts.py)
    with pytest.raises(data.RowError) as e:
        data.normalize({"prompt": "q", "chosen": "same", "rejected": "same "})
    assert e.value.reason == "chosen_equals_rejected"
    d, _ = data.normalize(
        {
            "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": "y"}],
            "rejected": "n",
        }
    )
    assert d == {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "y"}],
        "rejected": [{"role": "assistant", "content": "n"}],
    }


def test_sft_file_with_preference_rows_is_reported(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    rows, rejected, _ = data.load(path)
    assert not rows and rejected[0].reason == "unknown_schema" and "expected an SFT format" in rejected[0].detail


def test_whole_file_errors_are_clear(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(data.DataError, match="unsupported file type"):
        data.load(tmp_path / "x.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(data.DataError, match="not valid UTF-8 JSON"):
        data.load(tmp_path / "bad.json")
    with pytest.raises(data.DataError, match="data_format must be one of"):
        data.load(tmp_path / "bad.json", "csv")


def test_exact_and_near_duplicates(tmp_path):
    rows = _messages_rows()[:3]
    near = json.loads(json.dumps(rows[0]))
    near["messages"][1]["content"] = near["messages"][1]["content"].upper().replace(".", "")
    rows, rejected, _ = data.load(_write(tmp_path / "d.jsonl", rows + [rows[1], near]))
    kept, dups = data.dedupe(rows)
    assert [r.line for r in kept] == [1, 2, 3]
    assert [(d.line, d.reason) for d in dups] == [(4, "duplicate"), (5, "near_duplicate")]
    assert "line 2" in dups[0].detail and "line 1" in dups[1].detail


def test_split_is_seeded_by_conversation_and_has_no_leaks():
    rows = [
        data.Row(
            i + 1, {"messages": [{"role": "user", "content": f"q{i // 2}"}, {"role": "assistant", "content": f"a{i}"}]}
        )
        for i in range(40)
    ]  # 20 prompts, 2 answers each
    train, evals = data.split(rows, 0.2, seed=1)
    assert (len(train), len(evals)) == (32, 8)  # 20 prompts x 0.2 = 4 prompts = 8 rows held out
    assert {data.prompt_key(r) for r in train}.isdisjoint({data.prompt_key(r) for r in evals})
    assert data.split(rows, 0.2, seed=1) == (train, evals)
    assert data.split(rows, 0.2, seed=2) != (train, evals)
    _, leaks = data.drop_leaks(train, train[:3])
    assert [r.reason for r in leaks] == ["eval_in_train"] * 3


def test_rejected_share_gate():
    rej = [data.Rejected(i, "empty_field", "", {}) for i in range(6)]
    with pytest.raises(data.DataError, match="6 of 100 rows rejected"):
        data.check_rejected_share("f", 94, rej, 0.05)
    assert data.check_rejected_share("f", 94, rej, 0.1) == pytest.approx(0.06)
    # rejections caused by the split are not bad data
    assert data.check_rejected_share("f", 10, [data.Rejected(1, "prompt_in_eval", "", {})], 0.0) == 0.0


def test_bundled_dataset_is_clean_and_passes_untouched():
    for name, kind in (("sft.jsonl", "sft"), ("prefs.jsonl", "prefs")):
        path = data.resolve_data_path(f"data/pydoc_qa/{name}")
        rows, rejected, _ = data.load(path, kind=kind)
        kept, dups = data.dedupe(rows)
        assert rejected == [] and dups == [] and len(rows) > 1000
