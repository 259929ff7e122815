"""Reliability and safety: bad inputs never crash the loaders, faults leave resumable state, nothing leaves the
machine, private by default, reproducible. Counts go to the `resilience` line of the test summary.

Run: .venv/bin/python -m pytest tests/test_reliability.py
"""

import json
import os
import stat
import subprocess
import sys

import pytest
from conftest import OFFLINE_GUARD, TINY
from ftlab_faults import CrashAt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftlab import data, models, train
from ftlab.core import params as P
from ftlab.core import stages
from ftlab.core.paths import repo_root
from ftlab.runner import pipeline

# ---- bad inputs: the loaders ---------------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\x07bell", "x" * 5000, "ünïcödé", "\ufeffbom", "line\r\nbreak"]
)
_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | _text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_text, c, max_size=3),
    max_leaves=6,
)
_role = st.sampled_from(["system", "user", "assistant", "human", "gpt", "bot", "tool", "", None, 3])
_turn = st.fixed_dictionaries({"role": _role, "content": _value | _text})
_record = st.one_of(
    st.fixed_dictionaries({"messages": st.lists(_turn, max_size=4)}),
    st.fixed_dictionaries(
        {"conversations": st.lists(st.fixed_dictionaries({"from": _role, "value": _text}), max_size=4)}
    ),
    st.fixed_dictionaries({"instruction": _text, "output": _value | _text}),
    st.fixed_dictionaries({"prompt": _value | _text, "completion": _value | _text}),
    st.fixed_dictionaries({"prompt": _text, "chosen": _value | _text, "rejected": _value | _text}),
    st.dictionaries(_text, _value, max_size=4),
    _value,
)
_line = st.one_of(
    _record.map(lambda r: json.dumps(r, allow_nan=True).encode()),
    _record.map(lambda r: json.dumps(r)[: len(json.dumps(r)) // 2].encode()),  # truncated JSON
    st.binary(max_size=30),
    st.just(b""),
    st.just(b"\xff\xfe bad utf8"),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(_line, max_size=12), bom=st.booleans(), crlf=st.booleans(), kind=st.sampled_from(["sft", "prefs"])
)
def test_fuzzed_jsonl_ends_in_rows_or_numbered_rejections_never_a_traceback(
    tmp_path_factory, resilience, lines, bom, crlf, kind
):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    sep = b"\r\n" if crlf else b"\n"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + sep.join(lines))
    rows, rejected, _ = data.load(path, "auto", kind=kind)
    nonblank = [i for i, x in enumerate(sep.join(lines).split(b"\n"), 1) if x.rstrip(b"\r").strip()]
    try:  # a file that is one JSON array of records is read as one, numbered by record
        doc = json.loads(sep.join(lines).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, list) and doc and all(isinstance(r, dict) for r in doc):
        nonblank = list(range(1, len(doc) + 1))
    assert sorted([r.line for r in rows] + [r.line for r in rejected]) == nonblank  # every line accounted for
    assert all(r.reason in data.REASONS and r.detail for r in rejected)
    resilience("bad", len(lines) + 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, max_size=8), ext=st.sampled_from([".json", ".csv"]))
def test_fuzzed_json_and_csv_files_end_in_rows_rejections_or_a_clear_file_error(
    tmp_path_factory, resilience, records, ext
):
    path = tmp_path_factory.mktemp("fuzz") / f"data{ext}"
    if ext == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        import csv

        keys = sorted({k for r in records if isinstance(r, dict) for k in r if isinstance(k, str)})[:5] or ["text"]
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(keys)
            for r in records:
                w.writerow([str(r.get(k, "")) if isinstance(r, dict) else str(r) for k in keys])
    try:
        rows, rejected, _ = data.load(path, "auto")
    except data.DataError as e:  # a file-level problem: a message that says what was expected
        assert "expected" in str(e) or "invalid" in str(e)
    else:
        assert all(r.line >= 1 for r in rows + rejected) and all(r.reason in data.REASONS for r in rejected)
    resilience("bad", 1)


# ---- bad inputs: parameters ----------------------------------------------------------------------------------------

_any = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True),
    _text,
    st.lists(_text, max_size=3),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=st.sampled_from(sorted(P.SPECS)), name=st.data(), value=_any)
def test_fuzzed_parameter_values_pass_or_fail_with_a_param_error(resilience, stage, name, value):
    defaults = {d.name: d.default for d in P.notebook_parameters(repo_root() / "notebooks" / f"{stage}.ipynb")}
    key = name.draw(st.sampled_from(sorted(defaults)))
    try:
        P.validate(stage, {**defaults, key: value})
    except P.ParamError as e:
        assert key in str(e)
    resilience("bad", 1)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/etc", "a\\b", "", "x" * 65, "-lead", "ok\x00"])
def test_bad_run_names_are_refused_and_nothing_is_written(outputs, resilience, name):
    with pytest.raises(P.ParamError, match="run_name"):
        pipeline.run("00", "00", overrides={"run_name": name}, log=lambda *a: None)
    assert list(outputs.iterdir()) == [] and not (outputs.parent / "escape").exists()
    resilience("bad", 1)


def test_missing_data_file_is_a_clear_error(tmp_path, resilience):
    with pytest.raises(data.DataError, match="does not exist; expected a .jsonl"):
        data.load(tmp_path / "nope.jsonl")
    resilience("bad", 1)


# ---- private and safe by default -----------------------------------------------------------------------------------


def test_run_folders_are_private_to_their_owner(tiny_series):
    assert stat.S_IMODE(tiny_series.stat().st_mode) == 0o700  # the shared series' folder, made by its stage 00


def test_pickle_weights_and_remote_code_are_refused_unless_opted_in(tmp_path, monkeypatch):
    import torch

    src = models.resolve_model("tiny-random")
    import shutil

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(f"{src}/config.json", pickled)
    torch.save(models.load_model("tiny-random").state_dict(), pickled / "pytorch_model.bin")  # a pickle file only
    with pytest.raises(OSError, match="safetensors"):
        models.load_model(str(pickled))
    monkeypatch.setenv("FTLAB_ALLOW_PICKLE", "1")
    assert isinstance(models.load_model(str(pickled)), torch.nn.Module)  # the explicit opt-in works
    monkeypatch.delenv("FTLAB_ALLOW_PICKLE")

    remote = tmp_path / "remote"
    shutil.copytree(src, remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    assert models.safe_kwargs()["trust_remote_code"] is False
    model = models.load_model(str(remote))  # the config's own class is used; the repository's code never runs
    assert type(model).__name__ == "LlamaForCausalLM"


def test_training_reports_to_no_tracker_by_default(tmp_path):
    p = {
        "report_to": "none",
        "seed": 0,
        "epochs": 1.0,
        "max_steps": 1,
        "batch_size": 1,
        "grad_accum": 1,
        "learning_rate": 1e-4,
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "gradient_checkpointing": False,
        "eval_steps": 0,
        "save_steps": 1,
        "logging_steps": 1,
        "max_length": 64,
        "liger": False,
    }
    assert train.method_args(stages.method("sft"), tmp_path, p, "cpu").report_to == []


def test_series_runs_with_the_network_blocked(tiny_series, resilience):
    """The shared tiny series (conftest) ran with a socket guard on PYTHONPATH (a sitecustomize, inherited by every
    notebook kernel) that refuses every non-loopback connection and name lookup: stages 00 -> 06 (llama.cpp's
    converter and lm-eval included) still ran on the tiny model. Nothing needs the network."""
    probe = subprocess.run(
        [sys.executable, "-c", "import urllib.request; urllib.request.urlopen('https://huggingface.co', timeout=5)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(OFFLINE_GUARD)},
    )
    assert probe.returncode != 0 and "blocked by the test guard" in probe.stderr  # the guard is real
    kernels = (tiny_series.parent / "guard.log").read_text().split()
    assert len(set(kernels)) >= len(TINY)  # the guard was loaded in each stage's kernel (00 -> 06)
    m = json.loads((tiny_series / "manifest.json").read_text())
    assert [k for k, s in m["stages"].items() if s["status"] == "complete"] == list(TINY)
    lm = json.loads((tiny_series / "05_evaluate" / "metrics.json").read_text())["extras"]["lm_eval"]
    assert set(lm["models"]) == {"base", "sft", "dpo", "merged"}  # the harness ran offline on every model
    resilience("fault")


# ---- faults: disk full while checkpointing, killed while checkpointing; determinism ---------------------------------


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_resume_finishes(
    tmp_path, tiny_series, monkeypatch, resilience
):
    import errno

    import torch
    from trl import SFTTrainer

    tok = models.load_tokenizer("tiny-random")
    rows = data.read_jsonl(tiny_series / "01_prepare_data" / "train.jsonl")[:48]
    p = {
        "report_to": "none",
        "seed": 0,
        "epochs": 1.0,
        "max_steps": 6,
        "batch_size": 4,
        "grad_accum": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "optim": "adamw_torch",
        "gradient_checkpointing": False,
        "eval_steps": 0,
        "save_steps": 2,
        "logging_steps": 1,
        "max_length": 256,
        "liger": False,
    }
    ck = tmp_path / "checkpoints"

    def trainer():
        return SFTTrainer(
            model=models.load_model("tiny-random"),
            args=train.method_args(stages.method("sft"), ck, p, "cpu"),
            train_dataset=train.encode_dataset(tok, rows, 256),
            processing_class=tok,
            peft_config=train.lora_config(8, 16, 0.0, "all-linear"),
            callbacks=[CrashAt(), train.CheckpointComplete()],
        )

    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train.quiet(trainer()).train()
    monkeypatch.setattr(torch, "save", real_save)
    assert (ck / "checkpoint-2" / train.CHECKPOINT_DONE).exists()
    assert train.last_complete_checkpoint(ck).endswith("checkpoint-2")  # the half-written one is moved aside
    assert not (ck / "checkpoint-4").exists() and list(ck.glob("incomplete-checkpoint-4-*"))
    result = train.quiet(trainer()).train(resume_from_checkpoint=str(ck / "checkpoint-2"))
    assert result.global_step == 6
    resilience("fault")


def _run02(tiny_run, name, **extra):
    """Stage 02 with the shared series' parameters in a branch of it that holds its stage 01 only."""
    tiny_run(name, stages=("01_prepare_data",))
    pipeline.run("02", "02", overrides={"run_name": name, **TINY["02_train_sft"], **extra}, log=lambda *a: None)
    return tiny_run(name) / "02_train_sft"


def _losses(st):
    return [json.loads(x)["loss"] for x in (st / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_same_seed_same_losses_and_a_kill_during_a_checkpoint_write_resumes_to_the_same_adapter(
    tiny_series, tiny_run, crash_at, resilience
):
    from safetensors.torch import load_file

    a = tiny_series / "02_train_sft"  # the shared series: same data, seed, steps, LR, checkpoints every 2 steps
    crash_at(4, in_save=True)  # killed after writing checkpoint-4, before marking it
    with pytest.raises(pipeline.StageFailed):
        _run02(tiny_run, "det-crash")
    crash_at(None)
    c = _run02(tiny_run, "det-crash")
    s = json.loads((c / "summary.json").read_text())
    assert s["resumed_from"].endswith("checkpoint-2")  # never the unmarked checkpoint-4
    ref, got = (load_file(str(x / "adapter" / "adapter_model.safetensors")) for x in (a, c))
    assert max((got[k] - ref[k]).abs().max().item() for k in ref) < 1e-5
    # bit-identical losses on CPU with the same seed: steps 1-2 trained afresh here, 3-6 after the resume
    assert _losses(c) == _losses(a) and len(_losses(a)) == 6
    m = json.loads((tiny_series / "manifest.json").read_text())
    assert {"git", "versions", "device"} <= set(m) and m["stages"]["02_train_sft"]["params"]["seed"] == 42
    assert set(m["stages"]["01_prepare_data"]["inputs"]) >= {"data"}  # data hashes recorded
    resilience("fault")
