"""Stage 05: scores per model, verdicts, skipped stages named, report.html, optional judge and lm-eval.

Run: .venv/bin/python -m pytest tests/test_evaluate.py
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ftlab import evaluation
from ftlab.core.paths import repo_root
from ftlab.evaluation import scoring

PROBE_N = len((repo_root() / "data/probes/general_knowledge.jsonl").read_text().splitlines())


def test_stage_05_on_the_tiny_model_scores_every_model_and_names_what_it_skipped(tiny_series, tiny_run):
    run = tiny_series  # the shared series' stage 05 (conftest TINY): 4 generated rows, the probe, lm-eval on 10
    m = json.loads((run / "05_evaluate" / "metrics.json").read_text())
    assert set(m["models"]) == {"base", "sft", "dpo", "merged"} and m["final"] == "dpo"
    # the default compare_models names "final": here DPO's adapter, scored once, nothing missing
    assert not any(n.startswith(("dpo", "final", "merged")) for n in m["notes"]), m["notes"]
    tiny_run("sft-only")  # a run without stages 03 and 04: "final" is SFT's adapter, scored once; merged is named
    found, notes = evaluation.find("sft-only", ["base", "sft", "final", "merged"])
    assert list(found) == ["sft"]
    assert len(notes) == 1 and notes[0].startswith("merged: not evaluated") and "run its stage first" in notes[0]
    assert m["models"]["sft"]["nll"] < m["models"]["base"]["nll"]  # 6 SFT steps lower held-out NLL even here
    assert abs(m["models"]["merged"]["nll"] - m["models"]["dpo"]["nll"]) < 1e-3  # merged == base + DPO adapter
    for name in m["models"]:  # generation speed, from the tokens each model actually generated
        s = m["models"][name]
        assert s["generated_tokens_per_s"] > 0 and s["answer_tokens"] * s["n_generate"] > 0
    summary = json.loads((run / "05_evaluate" / "summary.json").read_text())
    assert set(summary["generated_tokens_per_s"]) == set(m["models"])
    assert m["comparisons"]["sft_vs_base"]["nll_diff"] < 0 and m["verdict"][0].startswith("SFT improved on BASE")
    assert set(m["probe"]) == {"base", "dpo"} and "pairwise judge: off" in " ".join(m["notes"])  # base vs final
    lm = m["extras"]["lm_eval"]  # the harness on every model, both local tasks (lm_eval_limit 10)
    assert set(lm["models"]) == set(m["models"]) and lm["tasks"] == ["ftlab_general_knowledge", "ftlab_heldout"]
    for name, tasks in lm["models"].items():
        # the gate's general-knowledge task is asked whole (its interval needs every question), and only of the two
        # models the gate compares (base and the final DPO); the held-out task of every model, 10 questions
        gate = {"ftlab_general_knowledge": PROBE_N} if name in ("base", "dpo") else {}
        assert {t: r["n"] for t, r in tasks.items()} == {**gate, "ftlab_heldout": 10}, name
        assert all(0 <= r["acc"] <= 1 and r["acc_stderr"] >= 0 for r in tasks.values())
    assert (
        "ftlab_general_knowledge" not in lm["commands"]["sft"]
        and "--tasks ftlab_general_knowledge " in lm["commands"]["dpo"]
    )
    assert ",peft=" in lm["commands"]["sft"] and ",peft=" not in lm["commands"]["base"]
    assert all((run / "05_evaluate" / "lm_eval" / f"{name}.json").exists() for name in m["models"])
    assert m["gates"]["forgetting_lm_eval"]["ok"] is not None  # decided from the harness's general-knowledge acc
    kept = json.loads((run / "05_evaluate" / "lm_eval" / "dpo.json").read_text())["questions"]
    assert len(kept["ftlab_heldout"]) == 10 and isinstance(lm["lost_by_final"], list)
    gate = m["gates"]["forgetting"]  # the probe ran: its gate condition was decided, with its numbers
    assert gate["ok"] in (True, False) and "nll_rise" in gate
    assert m["passed"] == all(g["ok"] is not False for g in m["gates"].values())
    served = m["extras"]["deployed"]  # stage 04's q8_0 GGUF, answered through llama.cpp's server
    assert served["qtype"] == "q8_0" and served["tokens_per_s"] > 0 and m["gates"]["deployed"]["ok"] is not None
    assert (m["not_promoted_because"] is None) == m["passed"]
    samples = [json.loads(x) for x in (run / "05_evaluate" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and set(samples[0]["answers"]) == set(m["models"])
    html = (run / "05_evaluate" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "<h2>Side by side</h2>" in html and samples[0]["prompt"][:20] in html
    assert "<h2>lm-evaluation-harness" in html and "ftlab_heldout acc_norm" in html
    assert ("<div class='verdict failed'>" in html) == (not m["passed"])  # a failed gate turns the top box red
    # the training stages' time and energy (estimated from device_power_w on a CPU) are in the metrics and the report
    assert [c["stage"] for c in m["compute"]] == ["02_train_sft", "03_train_dpo"]
    for c in m["compute"]:
        trained = json.loads((run / c["stage"] / "summary.json").read_text())
        assert c["energy_wh"] == trained["economics"]["energy_wh"] > 0
        assert c["energy_source"].startswith("estimate") and c["gpu_samples"] == 0
    assert "<h2>Compute and cost</h2>" in html and html.count("<tr><th>total</th>") == 1


class _Judge(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible judge: 'biased' always answers A; 'fair' picks the answer equal to the reference."""

    mode = "fair"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        ref = prompt.split("Reference answer:\n")[1].split("\n\n")[0]
        a = prompt.split("Answer A:\n")[1].split("\n\n")[0]
        pick = "A" if self.mode == "biased" or a == ref else "B"
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": pick}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_stage_05_reads_stage_03s_guard_scores_of_the_same_adapters_and_they_equal_scoring_again(tiny_series):
    """Stage 03's guard scored SFT's and DPO's adapters on the same held-out rows with stage 05's settings (conftest
    TINY: 4 answers of 8 tokens); stage 05 reuses those scores, says so, and they are what scoring again gives. A
    different adapter, row or setting is scored afresh."""
    from ftlab import data, models
    from ftlab.core import stages
    from ftlab.evaluation import reuse
    from ftlab.hardware import devices

    run = tiny_series
    kept = json.loads((run / "03_train_dpo" / "scores.json").read_text())
    m = json.loads((run / "05_evaluate" / "metrics.json").read_text())
    assert set(kept) == {"sft", "dpo"}
    for name in kept:
        assert m["models"][name]["nll"] == pytest.approx(kept[name]["score"]["nll"], abs=1e-4)
    cells = json.loads((run / "notebooks" / "05_evaluate.ipynb").read_text())["cells"]
    printed = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    assert printed.count("its score, not measured again") == 2
    rows = data.read_jsonl(run / "01_prepare_data" / "eval.jsonl")
    tok = models.load_tokenizer(models.TINY_MODEL)
    kw = {"max_length": 512, "n_generate": 4, "max_new_tokens": 8, "batch_size": 8, "extra_metrics": []}
    adapters = {n: str(run / stages.method(n).stage / stages.method(n).adapter) for n in ("sft", "dpo")}
    contenders = scoring.Contenders(models.load_model(models.TINY_MODEL, quantization="none"), adapters)
    for name, adapter in adapters.items():
        with contenders.use(name):
            again = scoring.score(contenders.model, tok, rows, **kw)
        reused = kept[name]["score"]
        assert again["per_example"]["answers"] == reused["per_example"]["answers"]
        assert max(abs(a - b) for a, b in zip(again["per_example"]["nll"], reused["per_example"]["nll"])) < 1e-5
        settings = reuse.scoring_settings(models.resolve_model(models.TINY_MODEL), "none", kw)
        assert devices.kind() == "cpu" and reuse.find(
            [run / "03_train_dpo"], name, reuse.key(adapter, rows, tok, **settings)
        )
        for changed in ({**kw, "max_new_tokens": 9}, {**kw, "extra_metrics": ["bleu"]}):
            k = reuse.key(adapter, rows, tok, **reuse.scoring_settings(settings["base_model"], "none", changed))
            assert reuse.find([run / "03_train_dpo"], name, k) is None
        assert reuse.find([run / "03_train_dpo"], name, reuse.key(adapter, rows[1:], tok, **settings)) is None
    other = reuse.key(adapters["sft"], rows, tok, **settings)  # the SFT adapter's key does not fetch DPO's score
    assert reuse.find([run / "03_train_dpo"], "dpo", other) is None


@pytest.mark.parametrize("mode", ["fair", "biased"])
def test_pairwise_judge_counts_only_position_consistent_wins(mode):
    _Judge.mode = mode
    srv = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        refs = ["Return the length.", "Base class.", "Encode bytes."]
        good, bad = refs, ["No idea.", "A frog.", "Decode."]
        r = scoring.pairwise_judge(f"http://127.0.0.1:{srv.server_port}", "judge", ["q1", "q2", "q3"], refs, bad, good)
    finally:
        srv.shutdown()
    if mode == "fair":
        assert (r["wins_b"], r["wins_a"], r["ties"]) == (3, 0, 0)
    else:  # always "A": the swapped order contradicts the first, so no win is counted
        assert (r["wins_b"], r["wins_a"], r["ties"]) == (0, 0, 3)


def _probe(nll: float, right: int, n: int = 200, spread: float = 0.2) -> dict:
    """A probe score as scoring.probe_score returns it: `n` questions, `right` of them answered right, per-question
    NLLs spread around `nll`."""
    nlls = [nll + spread * ((i % 5) - 2) / 2 for i in range(n)]
    correct = [i < right for i in range(n)]
    answers = [f"answer {i}" for i in range(n)]
    return {
        "nll": sum(nlls) / n,
        "correct": right / n,
        "per_example": {"nll": nlls, "correct": correct, "answers": answers},
    }


def test_a_forgetting_regression_beyond_tolerance_is_not_promoted_and_says_why():
    """The gate decides on 95% intervals over the probe's questions: the task improved, but the share of right
    answers fell 57% -> 35% on 200 questions (surely more than 3 points): not passed, and the refusal names the
    condition, its numbers and what to try. The same fall on 20 questions, or a loss of 4 of 200, is chance."""
    v = evaluation.Verdict("dpo", comparisons={"dpo_vs_base": {"improved": True, "regressed": False}})
    assert v.passed  # no gate checked yet: the task alone
    base, tuned = _probe(2.10, 114), _probe(2.15, 70)
    v.gates["forgetting"] = g = evaluation.forgetting_gate(base, tuned, nll_tol=0.1, correct_tol=0.03)
    assert not v.passed and g["failed_on"] == ["correct"] and g["correct_drop"] == 0.22 and g["n"] == 200
    assert 0.03 < g["correct_drop_ci"][0] < 0.22 < g["correct_drop_ci"][1] and g["nll_rise"] == 0.05
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}], "answer": "a"} for i in range(200)]
    lost = evaluation.forgetting_gate(base, tuned, 0.1, 0.03, rows)["lost"]  # which questions, with today's answer
    assert [x["question"] for x in lost] == [f"q{i}" for i in range(70, 114)] and lost[0]["now"] == "answer 70"
    why = v.refusal()
    assert why.startswith("forgetting: general-knowledge probe (200 questions): NLL 2.100 -> 2.150 (rise +0.050")
    assert "correct 57% -> 35% (drop +22.0%, 95% CI +" in why and "fails above 3%" in why and "fewer steps" in why
    assert v.gate_lines()[-1] == "promotion gate: not passed"
    v.gates["forgetting"] = evaluation.forgetting_gate(base, tuned, nll_tol=0.1, correct_tol=0.25)  # looser: passes
    assert v.passed and v.gate_lines()[1].startswith("promotion gate, forgetting: ok:")
    v.gates["forgetting"] = evaluation.forgetting_gate(base, _probe(2.10, 110), 0.1, 0.03)  # 4 of 200 lost: chance
    assert v.passed
    few_base, few_tuned = _probe(2.1, 11, n=20), _probe(2.1, 7, n=20)  # 20 points on 20 questions: 6 lost, 2 won
    few_tuned["per_example"]["correct"] = [6 <= i < 13 for i in range(20)]
    few = evaluation.forgetting_gate(few_base, few_tuned, 0.1, 0.03)
    assert few["ok"] and few["correct_drop"] == 0.2 and few["correct_drop_ci"][0] <= 0.03 < few["correct_drop_ci"][1]
    v.gates["forgetting"] = evaluation.forgetting_gate(base, _probe(2.3, 114), 0.1, 0.03)  # NLL rose on every question
    assert not v.passed and v.gates["forgetting"]["failed_on"] == ["NLL"] and "NLL 2.100 -> 2.300" in v.refusal()
    v.gates["forgetting"] = {"ok": None, "why": "off"}  # not checked: does not block, but is reported
    assert v.passed and "promotion gate, forgetting: not checked: off" in v.gate_lines()
    worse = evaluation.Verdict("sft", comparisons={"sft_vs_base": {"improved": False, "regressed": False}})
    assert not worse.passed and worse.refusal() == "the tuned model did not beat the base on the held-out task data"


def test_a_failed_gate_turns_the_reports_top_box_red_and_says_why_first():
    from ftlab.evaluation import report

    v = evaluation.Verdict("dpo", comparisons={"dpo_vs_base": {"improved": True, "regressed": False}})
    v.gates["forgetting"] = evaluation.forgetting_gate(_probe(2.1, 114), _probe(2.3, 114), 0.1, 0.03)
    args = ("Evaluation of run r", v.lines + v.gate_lines(), [], {}, [], {}, [], [])
    failed = report.page(*args, refused=v.refusal())
    box = failed.split("<div class='verdict failed'>")[1].split("</div>")[0]
    assert box.startswith("<strong>Not promoted: forgetting: general-knowledge probe (200 questions): NLL 2.100 -&gt;")
    assert box.count("<strong>") == 1 and "promotion gate: not passed" in box
    ok = report.page(*args)
    assert (
        "<div class='verdict'>" in ok and "verdict failed" not in ok.split("</style>")[1] and "Not promoted" not in ok
    )


def test_a_final_model_that_undoes_most_of_what_it_built_on_fails_the_gate():
    """DPO trained at SFT's learning rate lost 0.93 of SFT's 1.34 nats (the forgetting exercise's first form): the
    gate fails and says so; DPO at its default moved NLL by +0.009 (methods_sweep.json): it passes."""

    def s(nll):
        per = [nll + 0.02 * ((i * 7) % 11 - 5) for i in range(60)]
        return {"nll": sum(per) / 60, "rouge_l": 0.3, "per_example": {"nll": per, "rouge_l": [0.3] * 60}}

    undone = evaluation.verdicts({"base": s(3.0), "sft": s(1.66), "dpo": s(2.59)}, 0.02)
    g = undone.gates["kept_gain"]
    assert g["ok"] is False and undone.task_improved and not undone.passed  # better than the base, still refused
    assert g["parent_gain"] == 1.34 and g["lost_nll"] == 0.93 and g["lost_nll_ci"][0] > 0.67
    assert "kept_gain: DPO vs SFT: held-out NLL +0.930 nats/token" in undone.refusal()
    assert "-p 03_train_dpo.learning_rate" in g["try"] and "adapter=sft" in g["try"]
    kept = evaluation.verdicts({"base": s(3.0), "sft": s(2.2), "dpo": s(2.209)}, 0.02)
    assert kept.gates["kept_gain"]["ok"] and kept.passed
    assert "kept_gain" not in evaluation.verdicts({"base": s(3.0), "sft": s(2.2)}, 0.02).gates  # SFT builds on the base
