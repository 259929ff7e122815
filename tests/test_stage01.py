"""Stage 01 run headless by papermill on each supported input format, and on bad data.

Run: .venv/bin/python -m pytest tests/test_stage01.py
"""

import json

import pytest

from ftlab.runner import pipeline

N = 30
Q = [f"What does `pkg.func_{i}` do?" for i in range(N)]
A = [f"Return the value number {i} of the thing given." for i in range(N)]


def _write(tmp_path, kind):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    if kind == "messages.jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                for q, a in zip(Q, A)
            )
        )
    elif kind == "sharegpt.json":
        p = tmp_path / "d.json"
        p.write_text(
            json.dumps(
                [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in zip(Q, A)]
            )
        )
    elif kind == "alpaca.csv":
        import csv

        p = tmp_path / "d.csv"
        with open(p, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["instruction", "input", "output"])
            w.writerows([q, "", a] for q, a in zip(Q, A))
    elif kind == "prompt_completion.parquet":
        p = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist([{"prompt": q, "completion": a} for q, a in zip(Q, A)]), p)
    elif kind == "text.jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps({"text": f"{q} {a}"}) + "\n" for q, a in zip(Q, A)))
    else:
        p = tmp_path / "ds"
        Dataset.from_list([{"prompt": q, "completion": a} for q, a in zip(Q, A)]).save_to_disk(str(p))
    return p


def _run(path, outputs, log=lambda *a: None, **extra):
    params = {"run_name": "s01", "base_model": "tiny-random", "data_path": str(path), "prefs_path": "", **extra}
    return pipeline.run("01", "01", overrides=params, log=log)


@pytest.mark.parametrize(
    "kind",
    ["messages.jsonl", "sharegpt.json", "alpaca.csv", "prompt_completion.parquet", "text.jsonl", "datasets-folder"],
)
def test_stage01_accepts_each_format(tmp_path, outputs, kind):
    run = _run(_write(tmp_path, kind), outputs, eval_fraction=0.1)
    st = run / "01_prepare_data"
    stats = json.loads((st / "stats.json").read_text())
    assert stats["rejected"] == 0 and stats["audit"]["ok"]
    assert (stats["train"], stats["eval"]) == (27, 3)  # 30 conversations, 10% held out
    train = [json.loads(x) for x in (st / "train.jsonl").read_text().splitlines()]
    assert all(r["messages"][-1]["role"] == "assistant" for r in train)
    assert (st / "lengths.png").stat().st_size > 1000 and (st / "template.jinja").exists()


def test_stage01_bad_rows_fail_the_gate_with_line_numbers(tmp_path, outputs):
    path = _write(tmp_path, "messages.jsonl")
    lines = path.read_text().splitlines()
    lines[4] = '{"messages": [{"role": "user", "content": "q\\u0000"}, {"role": "assistant", "content": "a"}]}'
    lines[9] = '{"messages": [{"role": "user", "content": "only a question"}]}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(pipeline.StageFailed, match=r"2 of 30 rows rejected \(6.7% > max_rejected_share 5.0%\)"):
        _run(path, outputs)
    rejected = [
        json.loads(x) for x in (outputs / "s01" / "01_prepare_data" / "rejected.jsonl").read_text().splitlines()
    ]
    assert [(r["line"], r["reason"]) for r in rejected] == [(5, "nul_byte"), (10, "no_final_assistant")]
    # with a looser gate the same file passes and nothing else is lost: 28 accepted rows
    said = []
    run = _run(path, outputs, log=said.append, max_rejected_share=0.1)
    stats = json.loads((run / "01_prepare_data" / "stats.json").read_text())
    assert stats["train"] + stats["eval"] == 28 and stats["rejected"] == 2
    # the headless log says why, not only how many: each reason with its count and where the rows are
    done = said.index(next(x for x in said if "01_prepare_data ok" in x))
    assert said[done + 1].strip() == (
        f"rejected 2 rows: nul_byte x1, no_final_assistant x1 (each with its line: {run / '01_prepare_data'}"
        "/rejected.jsonl)"
    )


def test_stage01_separate_eval_file_rejects_rows_leaking_from_train(tmp_path, outputs):
    train_path = _write(tmp_path, "messages.jsonl")
    ev = tmp_path / "eval.jsonl"
    # 2 new prompts and 1 that is also in train (line 3: pkg.func_5, in different case) -> 2 eval rows, 1 leak
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "An answer."}]}
        for q in ("What does `other.a` do?", "What does `other.b` do?", Q[5].upper())
    ]
    ev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = _run(train_path, outputs, eval_path=str(ev))
    stats = json.loads((run / "01_prepare_data" / "stats.json").read_text())
    assert (stats["train"], stats["eval"], stats["rejected_reasons"]) == (30, 2, {"eval_in_train": 1})
    rejected = [json.loads(x) for x in (run / "01_prepare_data" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"], r["source"]) for r in rejected] == [(3, "eval_in_train", str(ev))]


def test_stage01_reads_llama_factory_preference_rows_and_records_content_warnings(tmp_path, outputs):
    """prefs_path in ShareGPT preference form (LLaMA-Factory's layout) becomes DPO pairs; a {{placeholder}} in the
    SFT file and an extra field are counted, with examples, in stats.json."""
    path = _write(tmp_path, "messages.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = json.dumps(
        {"messages": [{"role": "user", "content": "Hi {{name}}!"}, {"role": "assistant", "content": "Hello."}]}
    )
    lines[6] = json.dumps({**json.loads(lines[6]), "id": "row-7"})
    path.write_text("\n".join(lines) + "\n")
    prefs = tmp_path / "prefs.jsonl"
    pair = {
        "system": "Answer briefly.",
        "conversations": [{"from": "human", "value": "q"}],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    prefs.write_text("".join(json.dumps({**pair, "conversations": [{"from": "human", "value": q}]}) + "\n" for q in Q))
    said = []
    run = _run(path, outputs, log=said.append, prefs_path=str(prefs), eval_fraction=0.1)
    stats = json.loads((run / "01_prepare_data" / "stats.json").read_text())
    # the warning reaches the headless log too, not only stats.json and the executed notebook
    assert "    data: WARNING template_placeholder: 1 rows would train it verbatim (line 3: {{name}})" in said
    assert "    data: note: field 'id' in 1 rows is kept beside the row, not trained" in said
    assert stats["prefs"] > 0 and stats["warnings"]["data"] == {
        "template_placeholder": {"rows": 1, "examples": ["line 3: {{name}}"]},
        "ignored_field:id": {"rows": 1, "examples": ["line 7: id"]},
    }
    assert stats["warnings"]["prefs"] == {}
    pref_rows = [json.loads(x) for x in (run / "01_prepare_data" / "prefs.jsonl").read_text().splitlines()]
    assert pref_rows[0]["prompt"][0] == {"role": "system", "content": "Answer briefly."}
