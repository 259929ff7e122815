"""Run folders, the manifest, the resolve call and atomic writes.  Run: .venv/bin/python -m pytest tests/test_runs.py"""

import json

import pytest

from ftlab.core import paths, runs
from ftlab.core.params import ParamError

NS = {
    "run_name": "r1",
    "base_model": "tiny-random",
    "chat_check": False,
    "require_gpu": False,
    "bnb_smoke_test": False,
    "min_free_disk_gb": 1.0,
    "min_ram_gb": 1.0,
}


def test_resolve_creates_stage_folder_and_manifest(outputs):
    st = runs.resolve_stage("00_check_environment", dict(NS))
    assert st.dir == outputs / "r1" / "00_check_environment" and st.dir.is_dir()
    m = json.loads((outputs / "r1" / "manifest.json").read_text())
    entry = m["stages"]["00_check_environment"]
    assert entry["params"] == NS and entry["status"] == "running"
    assert m["versions"]["torch"] and m["device"]["type"] in ("cpu", "cuda") and "commit" in m["git"]
    assert entry["git"] == m["git"]


def test_each_stage_records_the_commit_it_ran_at_and_the_run_keeps_its_first(outputs, monkeypatch):
    monkeypatch.setattr(runs, "git_commit", lambda: {"commit": "a" * 40, "dirty": False})
    runs.resolve_stage("00_check_environment", dict(NS))
    monkeypatch.setattr(runs, "git_commit", lambda: {"commit": "b" * 40, "dirty": True})  # the code moved on
    runs.resolve_stage("00_check_environment", {**NS, "min_ram_gb": 2.0})
    m = runs.load_manifest("r1")
    assert m["git"]["commit"] == "a" * 40
    assert m["stages"]["00_check_environment"]["git"] == {"commit": "b" * 40, "dirty": True}


def test_unknown_name_injected_by_papermill_fails_before_any_folder(outputs):
    # papermill's injected cell puts `lora_rank = 8` into the namespace; notebook 00 never defines it
    with pytest.raises(ParamError, match="unknown parameter 'lora_rank'"):
        runs.resolve_stage("00_check_environment", {**NS, "lora_rank": 8})
    assert not (outputs / "r1").exists()


def test_typo_in_parameters_cell_is_caught(outputs):
    with pytest.raises(ParamError, match="chat_chek"):
        runs.resolve_stage("00_check_environment", {**NS, "chat_chek": True})


def test_later_cells_do_not_count_as_parameters(outputs):
    # re-running the resolve cell after body cells ran must not flag their variables (notebook 00 assigns `checks`),
    # nor IPython's own names, modules or objects
    import os

    ns = {**NS, "checks": [1, 2], "In": ["", "x"], "_i1": "x = 1", "os": os, "model": object()}
    runs.resolve_stage("00_check_environment", ns)


def test_finish_marks_complete_and_previous_needs_same_params(outputs):
    st = runs.resolve_stage("00_check_environment", dict(NS))
    assert st.previous() is None
    st.finish({"ok": True})
    assert json.loads(st.path("summary.json").read_text())["ok"] is True
    again = runs.resolve_stage("00_check_environment", dict(NS))
    assert again.previous()["ok"] is True
    changed = runs.resolve_stage("00_check_environment", {**NS, "min_ram_gb": 2.0})
    assert changed.previous() is None
    m = runs.load_manifest("r1")
    assert m["stages"]["00_check_environment"]["status"] == "running"


def test_missing_input_names_the_stage_to_run(outputs):
    st = runs.resolve_stage("00_check_environment", dict(NS))
    with pytest.raises(FileNotFoundError, match="Run notebooks/01_prepare_data.ipynb with run_name='r1'"):
        st.input("01_prepare_data", "train.jsonl")


def test_record_inputs_hashes_files(outputs, tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text("hello\n")
    st = runs.resolve_stage("00_check_environment", dict(NS))
    h = st.record_inputs({"data": f})
    # sha256("hello\n")
    assert h["data"] == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert runs.load_manifest("r1")["stages"]["00_check_environment"]["inputs"] == h


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "", ".hidden", "x" * 65, "a b"])
def test_run_dir_refuses_names_outside_outputs(outputs, name):
    with pytest.raises(ValueError):
        paths.run_dir(name)


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    paths.atomic_write_json(target, {"v": 1})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(paths.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        paths.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind
