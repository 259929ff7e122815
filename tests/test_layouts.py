"""The documented layouts of the tools users come from (LLaMA-Factory, Axolotl, OpenAI, TRL), converted exactly,
and rows that no reader may choke on, each rejected with its line and reason while every good row is kept.

Run: .venv/bin/python -m pytest tests/test_layouts.py
"""

import json

import pytest

from ftlab import data

U, A = {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}
SYS = {"role": "system", "content": "Answer briefly."}


def test_sharegpt_top_level_system_is_the_first_message():
    rec = {
        "system": "Answer briefly.",
        "conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."}],
    }
    assert data.normalize(rec) == ({"messages": [SYS, U, A]}, {})


def test_sharegpt_system_twice_is_rejected():
    rec = {
        "system": "x",
        "conversations": [
            {"from": "system", "value": "y"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
        ],
    }
    with pytest.raises(data.RowError, match="turn_order: a top-level system field and a system turn"):
        data.normalize(rec)


def test_alpaca_history_turns_come_first_in_order():
    rec = {
        "system": "Answer briefly.",
        "instruction": "And 3+3?",
        "input": "",
        "output": "6.",
        "history": [["What is 2+2?", "4."], ["And 2+3?", "5."]],
    }
    msgs, extra = data.normalize(rec)
    assert msgs["messages"] == [
        SYS,
        U,
        A,
        {"role": "user", "content": "And 2+3?"},
        {"role": "assistant", "content": "5."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6."},
    ]
    assert extra == {}
    with pytest.raises(data.RowError, match=r"wrong_type: history\[0\] must be an \[instruction, answer\] pair"):
        data.normalize({**rec, "history": [["only one"]]})


def test_sharegpt_preference_rows_are_pairs():
    rec = {
        "conversations": [{"from": "human", "value": "What is 2+2?"}],
        "chosen": {"from": "gpt", "value": "4."},
        "rejected": {"from": "gpt", "value": "5."},
    }
    pair, _ = data.normalize(rec)
    assert pair == {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "5."}]}


def test_sharegpt_preference_file_loads_as_prefs_and_is_named_in_a_chat_file(tmp_path):
    rec = {
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    rows, rejected, used = data.load(f, kind="prefs")
    assert len(rows) == 1 and not rejected and used == "sharegpt_preference (1)"
    rows, rejected, _ = data.load(f, kind="chat")
    assert not rows and rejected[0].reason == "unknown_schema" and "sharegpt_preference row" in rejected[0].detail


def test_openai_content_parts_are_joined_and_media_is_rejected_by_name():
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}]
    got, _ = data.normalize({"messages": [{"role": "user", "content": parts}, A]})
    assert got["messages"][0] == {"role": "user", "content": "What is\n2+2?"}
    img = [{"type": "image_url", "image_url": {"url": "x.png"}}, {"type": "text", "text": "what is this?"}]
    with pytest.raises(data.RowError, match=r"media_part: messages\[0\].content\[0\] is a 'image_url' part"):
        data.normalize({"messages": [{"role": "user", "content": img}, A]})


def test_tool_calls_and_tool_roles_get_a_specific_reason():
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    }
    with pytest.raises(data.RowError, match=r"tool_turn: messages\[1\] is a tool call \(get_weather\)"):
        data.normalize({"messages": [U, call, A]})
    for role in ("tool", "function_call", "observation"):
        with pytest.raises(data.RowError, match=f"tool_turn: .*role '{role}'"):
            data.normalize({"messages": [U, {"role": role, "content": "{}"}, A]})


@pytest.mark.parametrize("label", [True, False])
def test_kto_rows_are_stage03_data_never_sft_targets(tmp_path, label):
    row, _ = data.normalize({"messages": [U, A], "label": label})
    assert row == {"prompt": [U], "completion": [A], "label": label}  # the last assistant turn is the judged answer
    row, _ = data.normalize({"prompt": "q", "completion": "a", "label": label})
    assert row == {"prompt": [{"role": "user", "content": "q"}], "completion": [{**A, "content": "a"}], "label": label}
    f = tmp_path / "kto.jsonl"
    f.write_text(json.dumps({"messages": [U, A], "label": label}) + "\n" + json.dumps({"messages": [U, A]}) + "\n")
    rows, rejected, _ = data.load(f)
    assert [r.line for r in rows] == [2] and [(r.line, r.reason) for r in rejected] == [(1, "kto_row")]
    assert 'method="kto"' in rejected[0].detail  # says where such a row belongs
    rows, rejected, fmt = data.load(f, kind="prefs")
    assert [r.line for r in rows] == [1] and [(r.line, r.reason) for r in rejected] == [(2, "unknown_schema")]
    assert fmt == "kto_messages (1)" and data.conversations(rows[0]) == [[U, A]]


def test_kto_labels_must_be_booleans_and_judge_an_assistant_turn():
    for bad in ("yes", 1, None):
        with pytest.raises(data.RowError, match=r"wrong_type: label must be true \(desirable\) or false"):
            data.normalize({"prompt": "q", "completion": "a", "label": bad})
    with pytest.raises(data.RowError, match="no_final_assistant: a labelled conversation must end"):
        data.normalize({"messages": [U, A, U], "label": True})


def test_no_single_row_stops_the_file(tmp_path):
    """Deep nesting, a lone surrogate, an integer too long to convert, random bytes: each bad line is rejected with
    its line and reason, every good line is kept, and rejected.jsonl can be written."""
    good = json.dumps({"messages": [U, A]})
    bad = {
        2: ("[" * 100_000) + ("]" * 100_000),  # parses nowhere: too deep
        4: json.dumps({"messages": [{"role": "user", "content": "\ud800"}, A]}),  # valid JSON, a lone surrogate
        6: '{"messages": ' + "1" * 5000 + "}",  # more digits than Python converts
        8: '{"messages": [{"role": "user", "content": ' + "[" * 500 + "]" * 500 + "}]}",  # deep, inside a field
    }
    lines = [bad.get(n, good) for n in range(1, 10)]
    f = tmp_path / "mixed.jsonl"
    f.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n\xff\xfe garbage\n" + good.encode() + b"\n")
    rows, rejected, _ = data.load(f)
    assert [r.line for r in rows] == [1, 3, 5, 7, 9, 11]
    got = {r.line: r.reason for r in rejected}
    assert got == {2: "too_deep", 4: "invalid_utf8", 6: "invalid_json", 8: "wrong_type", 10: "invalid_utf8"}, got
    out = tmp_path / "rejected.jsonl"
    data.write_jsonl(out, data.rejected_json(rejected))  # the writer takes every rejected row
    assert len(out.read_text(encoding="utf-8").splitlines()) == 5


def test_the_data_card_lists_every_layout():
    from ftlab.core.paths import repo_root
    from ftlab.data import formats

    card = (repo_root() / "data" / "README.md").read_text()
    missing = [f.name for f in formats.FORMATS if f"`{f.name}`" not in card]
    assert not missing, f"data/README.md's layout table lacks {missing}"


def test_the_gate_names_lines_reasons_the_file_and_the_fix(tmp_path, capsys):
    rej = [data.Rejected(n, "too_long", f"{600 + n} tokens > max_length 512", {}) for n in (3, 8, 9, 12)]
    rej.append(data.Rejected(5, "invalid_json", "Expecting value at column 1", "{"))
    path = tmp_path / "rejected.jsonl"
    with pytest.raises(data.DataError) as e:
        data.check_rejected_share("sft.jsonl", 20, rej, 0.1, path)
    msg = str(e.value)
    assert "5 of 25 rows rejected (20.0% > max_rejected_share 10.0%)" in msg
    assert (
        "too_long x4 (line 3: 603 tokens > max_length 512; line 8: 608" in msg and ", ...) -> raise max_length" in msg
    )
    assert "invalid_json x1 (line 5: Expecting value at column 1)" in msg and str(path) in msg
    with pytest.raises(data.DataError, match="none of its 5 rows was accepted"):
        data.check_rejected_share("sft.jsonl", 0, rej, 1.0, path)
    assert data.check_rejected_share("sft.jsonl", 95, rej, 0.1, path) == pytest.approx(0.05)
    assert "sft.jsonl: 95 rows accepted, 5 rejected (5.0%)" in capsys.readouterr().out


def test_placeholders_media_tags_and_untrained_fields_are_warned_with_examples(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi {{name}}, what is 2+2?"}, A]},
        {"messages": [{"role": "user", "content": "<image>\nWhat is shown?"}, A], "images": ["a.png"]},
        {"messages": [U, A]},
    ]
    f = tmp_path / "w.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = data.content_warnings(data.load(f)[0])
    assert got == {
        "template_placeholder": {"rows": 1, "examples": ["line 1: {{name}}"]},
        "media_placeholder": {"rows": 1, "examples": ["line 2: <image>"]},
        "ignored_field:images": {"rows": 1, "examples": ["line 2: images"]},
    }
    text = data.brief_warnings(got)
    assert "WARNING template_placeholder: 1 rows would train it verbatim (line 1: {{name}})" in text
    assert "note: field 'images' in 1 rows is kept beside the row, not trained" in text
    assert data.brief_warnings({}) == "no content warnings"


def test_compressed_files_and_arrays_in_jsonl_load_and_misnamed_ones_are_named(tmp_path, capsys):
    import gzip

    rows = [{"messages": [U, A]}, {"prompt": "q", "completion": "a"}]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "d.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    for name in ("d.jsonl.gz", "d.json.gz"):
        got, rejected, _ = data.load(tmp_path / name)
        assert [r.data["messages"][0]["role"] for r in got] == ["user", "user"] and not rejected, name
    (tmp_path / "array.jsonl").write_text(json.dumps(rows, indent=2))
    got, rejected, _ = data.load(tmp_path / "array.jsonl")
    assert [r.line for r in got] == [1, 2] and not rejected
    assert "array.jsonl holds one JSON array, not a record per line: read as 2 records" in capsys.readouterr().out
    (tmp_path / "zipped.jsonl").write_bytes(gzip.compress(body))
    with pytest.raises(data.DataError, match=r"zipped.jsonl is gzip-compressed but not named .gz; rename it zipped"):
        data.load(tmp_path / "zipped.jsonl")
    (tmp_path / "plain.jsonl.gz").write_bytes(body)
    with pytest.raises(data.DataError, match="is named .gz but is not gzip-compressed"):
        data.load(tmp_path / "plain.jsonl.gz")


def test_fuzz_good_rows_all_kept_bad_rows_all_rejected_with_lines(tmp_path):
    import random

    rng = random.Random(0)
    good = [
        json.dumps({"messages": [{"role": "user", "content": f"q{i} ünï"}, {"role": "assistant", "content": f"a{i}"}]})
        for i in range(60)
    ]
    lines, bad = [], set()
    for n, g in enumerate(good, 1):
        raw = g.encode()
        kind = rng.choice(["keep", "keep", "bytes", "cut", "deep", "surrogate"])
        if kind == "bytes":  # random bytes spliced in, one of them never valid UTF-8
            at = rng.randrange(len(raw))
            raw = raw[:at] + bytes(rng.randrange(256) for _ in range(5)) + b"\xff" + raw[at:]
        elif kind == "cut":
            raw = raw[: rng.randrange(1, len(raw) - 1)]
        elif kind == "deep":
            raw = b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        elif kind == "surrogate":
            raw = g.replace(f"a{n - 1}", "\\udc80").encode()
        if kind != "keep":
            bad.add(n)
        lines.append(raw.replace(b"\n", b" "))
    f = tmp_path / "fuzz.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    rows, rejected, _ = data.load(f)
    assert bad and {r.line for r in rows} == set(range(1, 61)) - bad
    assert {r.line for r in rejected} == bad and all(r.reason in data.REASONS for r in rejected)
    data.write_jsonl(tmp_path / "rejected.jsonl", data.rejected_json(rejected))


def test_alpaca_preference_rows_are_pairs():
    rec = {"system": "Answer briefly.", "instruction": "What is", "input": "2+2?", "chosen": "4.", "rejected": "5."}
    pair, _ = data.normalize(rec)
    assert pair == {
        "prompt": [SYS, {"role": "user", "content": "What is\n\n2+2?"}],
        "chosen": [A],
        "rejected": [{"role": "assistant", "content": "5."}],
    }


def test_json_arrays_number_records_and_say_so(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"messages": [U, A]}, {"messages": [U]}]))
    _, rejected, _ = data.load(f)
    assert [(r.line, r.unit, r.reason) for r in rejected] == [(2, "record", "no_final_assistant")]
    assert data.rejection_summary(rejected).startswith("  no_final_assistant x1 (record 2: ")
    assert data.rejected_json(rejected)[0]["unit"] == "record"


def test_an_array_in_a_jsonl_file_numbers_records_in_every_later_rejection(tmp_path):
    f = tmp_path / "array.jsonl"
    f.write_text(json.dumps([{"messages": [U, A]}, {"messages": [U]}, {"messages": [U, A]}], indent=2))
    rows, rejected, _ = data.load(f)
    assert [(r.line, r.unit, r.reason) for r in rejected] == [(2, "record", "no_final_assistant")]
    _, dups = data.dedupe(rows)  # a rejection made after loading says what its number counts too
    assert [(r.line, r.unit, r.detail) for r in dups] == [(3, "record", "same as record 1")]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"messages": [U, A]}) + "\n" + json.dumps({"messages": [U, A]}) + "\n")
    assert [(r.unit, r.detail) for r in data.dedupe(data.load(plain)[0])[1]] == [("line", "same as line 1")]


def test_messages_preference_rows_are_pairs(tmp_path):
    rec = {"messages": [SYS, U], "chosen": A, "rejected": {"role": "assistant", "content": "5."}}
    pair, extra = data.normalize(rec)
    assert pair == {"prompt": [SYS, U], "chosen": [A], "rejected": [{"role": "assistant", "content": "5."}]}
    assert extra == {}
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(rec) + "\n")
    rows, rejected, used = data.load(f, kind="prefs")
    assert len(rows) == 1 and not rejected and used == "messages_preference (1)"
    rows, rejected, _ = data.load(f)  # never trained as an SFT conversation
    assert not rows and "found a messages_preference row" in rejected[0].detail


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files_are_converted_with_a_note(tmp_path, capsys, encoding):
    """Windows tools save text as UTF-16 (with a byte-order mark, or without one); it is read, not called invalid."""
    body = json.dumps({"messages": [{"role": "user", "content": "Grüße? 2+2"}, A]}, ensure_ascii=False) + "\n"
    f = tmp_path / "w.jsonl"
    f.write_bytes((body + body.replace("2+2", "3+3")).encode(encoding))
    rows, rejected, _ = data.load(f)
    assert [r.data["messages"][0]["content"] for r in rows] == ["Grüße? 2+2", "Grüße? 3+3"] and not rejected
    assert "w.jsonl is UTF-" in capsys.readouterr().out
    c = tmp_path / "w.csv"
    c.write_bytes("instruction,output\nWhat is 2+2?,4.\n".encode(encoding))
    assert [r.data["messages"] for r in data.load(c)[0]] == [[U, A]]


def test_a_lone_surrogate_in_a_utf16_file_rejects_only_its_line(tmp_path):
    good = json.dumps({"messages": [U, A]}).encode("utf-16-le")
    bad = '{"messages": [{"role": "user", "content": "x'.encode("utf-16-le") + b"\x00\xd8" + '"}]}'.encode("utf-16-le")
    f = tmp_path / "s.jsonl"
    f.write_bytes(b"\xff\xfe" + good + "\n".encode("utf-16-le") + bad + "\n".encode("utf-16-le") + good)
    rows, rejected, _ = data.load(f)
    assert [r.line for r in rows] == [1, 3] and [(r.line, r.reason) for r in rejected] == [(2, "invalid_utf8")]


def test_a_lone_list_line_and_bytes_that_only_look_gzipped_stay_numbered_lines(tmp_path):
    f = tmp_path / "list.jsonl"
    f.write_text("[]\n")
    rows, rejected, _ = data.load(f)
    assert not rows and [(r.line, r.reason) for r in rejected] == [(1, "wrong_type")]
    g = tmp_path / "magic.jsonl"
    g.write_bytes(b"\x1f\x8b not gzip at all\n" + json.dumps({"messages": [U, A]}).encode() + b"\n")
    rows, rejected, _ = data.load(g)
    assert [r.line for r in rows] == [2] and [(r.line, r.reason) for r in rejected] == [(1, "invalid_utf8")]
