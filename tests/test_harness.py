"""The lm-evaluation-harness in stage 05: the local tasks of data/lm_eval/ (built from the repository's own files),
the harness's numbers against a hand computation on the tiny model, any other local task, the forgetting gate.

Run: .venv/bin/python -m pytest tests/test_harness.py
"""

import json
import math
import sys

import pytest

from ftlab import models
from ftlab.core.paths import repo_root
from ftlab.evaluation import lm_eval_harness, scoring

sys.path.insert(0, str(repo_root() / "data" / "lm_eval"))
import tasks  # noqa: E402  (data/lm_eval/tasks.py: the local tasks' dataset functions)


def test_general_knowledge_task_is_the_probe_as_a_cloze_on_its_key_word_the_same_way_every_time():
    probe = [json.loads(x) for x in (repo_root() / "data/probes/general_knowledge.jsonl").read_text().splitlines()]
    docs = tasks.general_knowledge_docs()
    assert docs == tasks.general_knowledge_docs() and len(docs) == len(probe)  # seeded by the question: stable
    keys = {x["answer"] for x in probe}
    kind = {r["answer"]: r["kind"] for r in probe}
    for d, r in zip(docs, probe, strict=True):
        right = r["messages"][-1]["content"]
        head = right[: right.rindex(r["answer"])]  # the sentence up to its key word starts the answer
        assert d["question"] == r["messages"][0]["content"] and d["prefix"] == head.rstrip()
        assert (d["prefix"] + d["choices"][d["gold"]]) == head + r["answer"]  # the right choice is the key word
        assert len(set(d["choices"])) == tasks.N_CHOICES
        for c in d["choices"]:  # each choice is a key word, with the space before it where the sentence has one
            assert c == (" " if head.endswith(" ") else "") + c.strip() and c.strip() in keys
        # a key word is swapped only for another of its kind: a capital for a capital, a number for a number
        assert {kind[c.strip()] for c in d["choices"]} == {r["kind"]}, (r, d["choices"])
    assert {d["gold"] for d in docs} == set(range(tasks.N_CHOICES))  # the right answer is not always first
    spider = next(d for d in docs if "spider" in d["question"])
    assert spider["prefix"] == "A spider has"
    assert all(c.strip() in tasks.NUMBER_WORDS or c.strip().isdigit() for c in spider["choices"])


def test_the_probe_has_200_questions_built_by_its_script_and_none_is_in_the_training_data():
    sys.path.insert(0, str(repo_root() / "data"))
    import build_probe

    path = repo_root() / "data/probes/general_knowledge.jsonl"
    assert path.read_text(encoding="utf-8") == build_probe.text()  # regenerate: python data/build_probe.py
    probe = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(probe) >= 200 and len({r["messages"][0]["content"] for r in probe}) == len(probe)
    assert len({r["kind"] for r in probe}) >= 10  # capitals, numbers, authors, languages, science, ...
    trained = " ".join((repo_root() / "data/pydoc_qa" / f).read_text().lower() for f in ("sft.jsonl", "prefs.jsonl"))
    assert not [r for r in probe if r["messages"][0]["content"].lower() in trained]  # disjoint from training
    assert [scoring.answer_match(r["answer"], r["messages"][-1]["content"], r.get("aliases", ())) for r in probe] == [
        True
    ] * len(probe)  # every reference sentence says its key word


def test_heldout_task_puts_each_reference_among_other_heldout_answers_and_bad_input_is_named(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
        for i in range(6)
    ]
    f = tmp_path / "eval.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = tasks.heldout_docs(str(f))
    assert [d["question"] for d in docs] == [f"Q{i}?" for i in range(6)]
    assert all(d["choices"][d["gold"]] == f"Answer {i}." for i, d in enumerate(docs))
    assert all(set(d["choices"]) <= {f"Answer {i}." for i in range(6)} for d in docs)
    f.write_text(f.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"eval.jsonl:7: expected one JSON object per line"):
        tasks.heldout_docs(str(f))
    with pytest.raises(ValueError, match="ftlab_heldout needs the held-out file"):
        tasks.heldout()


def _loglik(model, tok, context: str, continuation: str) -> float:
    import torch

    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
    return sum(logits[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_harness_accuracy_equals_a_hand_computed_log_likelihood_choice_under_the_chat_template(tmp_path):
    """What lm-eval reports for the tiny model is what the model prefers: each question rendered with the training
    chat template and the answer's start, each choice's summed log-likelihood, the highest one against the gold
    answer (lm-eval scores one-token choices of one context from one forward pass: the same numbers)."""
    tok = models.load_tokenizer(models.TINY_MODEL)
    model = models.load_model(models.TINY_MODEL).eval()
    p = {"lm_eval_tasks": lm_eval_harness.FORGETTING_TASK, "lm_eval_include_path": "", "lm_eval_limit": 12}
    run = lm_eval_harness.Runner(
        p | {"batch_size": 4, "max_length": 256}, tok, tmp_path / "unused.jsonl", tmp_path / "out"
    )
    run("base", model, "pretrained=tiny")
    # lm-eval's task index is built once per runner, of the local tasks only (the ~13,000 bundled ones not read)
    assert run.task_manager() is run.task_manager() and "hellaswag" not in run.task_manager().all_tasks
    got = run.results["base"][lm_eval_harness.FORGETTING_TASK]
    hits, picks = [], []
    docs = tasks.general_knowledge_docs()  # the gate's task is asked whole: lm_eval_limit does not cut it
    for d in docs:  # the answer starts with the sentence up to the key word; only the key word is scored
        chat = [{"role": "user", "content": d["question"]}]
        if d["prefix"]:
            chat.append({"role": "assistant", "content": d["prefix"]})
        ctx = tok.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=not d["prefix"], continue_final_message=bool(d["prefix"])
        )
        ll = [_loglik(model, tok, ctx, c) for c in d["choices"]]
        picks.append(max(range(len(ll)), key=ll.__getitem__))
        hits.append(picks[-1] == d["gold"])
    assert got["n"] == len(docs) >= 200 and math.isclose(got["acc"], sum(hits) / len(docs), abs_tol=1e-4)
    # each question's outcome is kept: the same choice as by hand, question by question
    assert [a["pick"] for a in run.answers["base"][lm_eval_harness.FORGETTING_TASK]] == picks
    assert (tmp_path / "out" / "base.json").exists() and "--apply_chat_template" in run.commands["base"]
    assert " --limit" not in run.commands["base"]  # the shell command asks the whole task too
    # in stage 05 the gate's task goes to the models the gate compares; the others get the other tasks, limited
    found = {"sft": tmp_path, "dpo": tmp_path, "merged": tmp_path}
    stage = type(
        "S",
        (),
        {"params": p | {"batch_size": 4, "max_length": 256}, "input": lambda *a: tmp_path, "path": lambda *a: tmp_path},
    )()
    r = lm_eval_harness.runner(stage, tok, [], found)
    r.tasks = [lm_eval_harness.FORGETTING_TASK, lm_eval_harness.HELDOUT_TASK]
    assert r.gate_models == ("base", "dpo") and r.groups("base") == r.groups("dpo")
    assert r.groups("dpo") == [([lm_eval_harness.FORGETTING_TASK], None), ([lm_eval_harness.HELDOUT_TASK], 12)]
    assert r.groups("sft") == r.groups("merged") == [([lm_eval_harness.HELDOUT_TASK], 12)]
    assert lm_eval_harness.FORGETTING_TASK not in r.command("pretrained=x", "merged") and " --limit 12" in r.command(
        "x", "sft"
    )


def test_a_task_the_local_folder_lacks_is_looked_up_among_the_harness_bundled_tasks(tmp_path, monkeypatch):
    """`lm_eval_tasks = "hellaswag"` needs the bundled index; local tasks alone do not (indexing it costs ~20 s)."""
    import lm_eval.tasks

    built = []

    class Index:  # stands in for lm-eval's TaskManager: which index the runner asks for, and what it knows
        def __init__(self, include_path=None, include_defaults=True, metadata=None):
            built.append(include_defaults)
            self.all_tasks = [lm_eval_harness.FORGETTING_TASK, lm_eval_harness.HELDOUT_TASK] + [
                "hellaswag"
            ] * include_defaults

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Index)
    p = {"lm_eval_include_path": "", "lm_eval_limit": 0, "batch_size": 2, "max_length": 64}
    local = lm_eval_harness.Runner(p | {"lm_eval_tasks": lm_eval_harness.HELDOUT_TASK}, None, tmp_path, tmp_path)
    assert local.task_manager() is local.task_manager() and built == [False]
    bundled = lm_eval_harness.Runner(
        p | {"lm_eval_tasks": f"hellaswag,{lm_eval_harness.HELDOUT_TASK}"}, None, tmp_path, tmp_path
    )
    assert "hellaswag" in bundled.task_manager().all_tasks and built == [False, False, True]


def test_any_local_task_folder_works_and_the_gate_reads_general_knowledge(tmp_path):
    """A user's own task YAML (the harness's json loader on an absolute file) runs like the bundled ones."""
    data = tmp_path / "mine.jsonl"
    docs = [{"q": f"Pick {w}", "choices": [w, "zebra"], "gold": 0} for w in ("apple", "pear", "plum")]
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "mine.yaml").write_text(
        f"task: my_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n"
    )
    tok = models.load_tokenizer(models.TINY_MODEL)
    p = {"lm_eval_tasks": "my_task", "lm_eval_include_path": str(tmp_path), "lm_eval_limit": 0}
    run = lm_eval_harness.Runner(p | {"batch_size": 2, "max_length": 64}, tok, tmp_path / "x", tmp_path / "out")
    run("base", models.load_model(models.TINY_MODEL), "pretrained=tiny")
    assert run.results["base"]["my_task"]["n"] == 3 and "acc" in run.results["base"]["my_task"]
    assert (
        lm_eval_harness.status("") == "lm-eval: off (lm_eval_tasks is empty)"
        and lm_eval_harness.status("my_task") is None
    )

    def answers(picks):  # one outcome per question of the general-knowledge task, gold always choice 0
        return {
            lm_eval_harness.FORGETTING_TASK: [{"question": f"q{i}", "gold": 0, "pick": p} for i, p in enumerate(picks)]
        }

    # 200 questions: base right on 120 (60%), the tuned model on 90 (45%): a drop whose 95% interval lies above 3 points
    run.answers = {"base": answers([0] * 120 + [1] * 80), "sft": answers([0] * 90 + [1] * 110)}
    g = lm_eval_harness.forgetting_gate(run, "base", "sft", tol=0.03)
    assert g["ok"] is False and g["n"] == 200 and g["acc_drop"] == 0.15 and 0.03 < g["acc_drop_ci"][0] < 0.15
    assert g["why"].startswith("lm-eval ftlab_general_knowledge (200 questions) acc 60% -> 45% (drop +15.0%, 95% CI +")
    assert lm_eval_harness.forgetting_gate(run, "base", "sft", tol=0.2)["ok"] is True  # surely not a drop of 20 points
    run.answers["sft"] = answers([0] * 116 + [1] * 84)  # 4 questions of 200 lost: within chance, the gate passes
    assert lm_eval_harness.forgetting_gate(run, "base", "sft", tol=0.03)["ok"] is True
    run.answers = {"base": answers([0] * 12 + [1] * 8), "sft": answers([0] * 9 + [1] * 11)}  # 15 points on 20 questions
    small = lm_eval_harness.forgetting_gate(
        run, "base", "sft", tol=0.03
    )  # the same fall on 20 questions proves nothing
    assert small["ok"] is True and small["acc_drop_ci"][0] <= 0.03 < small["acc_drop_ci"][1]
    assert (
        lm_eval_harness.forgetting_gate(run, "base", "dpo", 0.03)["ok"] is None
    )  # not run on the final model: not checked
    lm = {
        "models": {
            "base": {lm_eval_harness.FORGETTING_TASK: {"acc": 0.6}},
            "sft": {lm_eval_harness.FORGETTING_TASK: {"acc": 0.45}},
        }
    }
    run.answers = {  # the questions the tuned model lost, by name (what the notebook prints and metrics.json keeps)
        "base": {
            lm_eval_harness.FORGETTING_TASK: [{"question": q, "gold": 0, "pick": p} for q, p in zip("abc", (0, 0, 1))]
        },
        "sft": {
            lm_eval_harness.FORGETTING_TASK: [{"question": q, "gold": 0, "pick": p} for q, p in zip("abc", (1, 0, 0))]
        },
    }
    assert lm_eval_harness.flips(run, "base", "sft") == ["a"] and lm_eval_harness.flips(run, "sft", "base") == ["c"]
    head, rows = lm_eval_harness.table(lm)
    assert head == ["model", "ftlab_general_knowledge acc"] and rows == [["base", "0.600"], ["sft", "0.450"]]


def test_stage_06_shows_the_final_models_lm_eval_numbers_beside_its_nll(outputs):
    from ftlab.evaluation import compare

    run = outputs / "r1"
    (run / "05_evaluate").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"run_name": "r1", "stages": {}}))
    lm = {
        "dpo": {
            lm_eval_harness.HELDOUT_TASK: {"acc": 0.5, "acc_norm": 0.68},
            lm_eval_harness.FORGETTING_TASK: {"acc": 0.9},
        }
    }
    metrics = {
        "final": "dpo",
        "passed": False,
        "models": {"base": {"nll": 3.9, "rouge_l": 0.15}, "dpo": {"nll": 2.7, "rouge_l": 0.3}},
        "extras": {"lm_eval": {"models": lm}},
    }
    (run / "05_evaluate" / "metrics.json").write_text(json.dumps(metrics))
    row = compare.collect(run)
    assert (row["lm_eval_heldout_acc_norm"], row["lm_eval_general_acc"]) == (0.68, 0.9)
    board = compare.leaderboard([row])
    assert board.iloc[0]["lm_eval_heldout_acc_norm"] == 0.68 and "lm_eval_general_acc" in board.columns
