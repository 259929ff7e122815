"""Stage 04: merge, GGUF through llama.cpp's converter and quantizer, checks in llama.cpp, Modelfile, model card.

Run: .venv/bin/python -m pytest tests/test_export.py
"""

import json
from pathlib import Path

import pytest
import yaml

from ftlab import export, models
from ftlab.core import stages

# ---- the Ollama template, rendered as Go renders it -------------------------------------------------------------


def test_go_template_subset_renders_like_go_including_trim_markers():
    t = "A {{- if .System }} [{{ .System }}] {{- else }} none {{- end }}\n{{ range .Messages }}<{{ .Role }}:{{ .Content }}>{{ end }}"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert export.render_go_template(t, "S", msgs) == "A [S]\n<user:hi><assistant:yo>"
    assert export.render_go_template(t, "", msgs[:1]) == "A none\n<user:hi>"
    t2 = (
        '{{ range .Messages }}{{ if eq .Role "user" }}U{{ else if eq .Role "assistant" }}A{{ else }}?{{ end }}{{ end }}'
    )
    assert export.render_go_template(t2, "", msgs + [{"role": "tool", "content": ""}]) == "UA?"
    with pytest.raises(export.ExportError, match="unsupported"):
        export.render_go_template("{{ .Tools }}", "", [])


def test_derived_modelfile_template_matches_the_chat_template_and_a_trim_bug_is_caught():
    tok = models.load_tokenizer("tiny-random")
    pieces = export.template_pieces(tok)
    mf = export.parse_modelfile(
        export.modelfile("m.gguf", pieces, export.stop_strings(tok, models.resolve_model("tiny-random")), 2048)
    )
    assert export.check_ollama_template(mf["template"], tok) == 4
    assert export.check_ollama_template(mf["template"], tok, "Answer in French.") == 4  # a SYSTEM line
    assert mf["parameters"]["stop"] == ["<|im_end|>"] and mf["from"] == "./gguf/m.gguf"
    # the classic mistake: a trim marker eats the newline after <|im_end|>
    with pytest.raises(export.ExportError, match="renders"):
        export.check_ollama_template(mf["template"].replace("{{ else }}", "{{- else }}"), tok)


def test_interrupted_quantize_leaves_no_file_under_the_final_name(tmp_path, monkeypatch, resilience):
    import llama_cpp

    src, out = tmp_path / "m-f16.gguf", tmp_path / "m-q8_0.gguf"
    src.write_bytes(b"GGUF")

    def dies_half_way(inp, outp, params):
        open(outp, "wb").write(b"half")  # a partial file, then failure
        return 1

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", dies_half_way)
    with pytest.raises(export.ExportError, match=r"failed \(llama_model_quantize returned 1; [0-9.]+ GiB free in "):
        export.quantize(src, out, "q8_0")  # the free space is named: a full disk is the usual cause
    assert not out.exists() and list(tmp_path.iterdir()) == [src]
    resilience("fault")


# ---- the stage on the tiny model: the real converter, quantizer and llama.cpp ----------------------------------


def test_stage_04_exports_verified_gguf_modelfile_and_card(
    tiny_series, tiny_run, outputs, monkeypatch, tmp_path_factory
):
    # the shared series' stage 04 (conftest TINY: 4 check prompts, f16 + q8_0 + q4_k_m). Random weights: near-tied
    # logits make f16 rounding flip greedy tokens, so agreement is not asserted here (it is on the embedded default
    # in test_series_slow.py); everything else is
    monkeypatch.setenv("FTLAB_OUTPUTS", str(tiny_series.parent))  # read it where it is; nothing is written there
    st = tiny_series / "04_merge_export"
    s = json.loads((st / "summary.json").read_text())
    assert s["adapter"] == "dpo"  # adapter="auto": the last training stage that saved one (03)
    sft_only = tiny_run("sft-only")  # a run without stage 03: auto falls back to SFT's adapter
    assert stages.final_method(lambda n: sft_only / n, "auto").name == "sft"
    assert s["merge"]["agreement"] == 1.0 and s["merge"]["max_logit_diff"] < 1e-3  # merged == base + adapter
    assert {p.name for p in (st / "gguf").iterdir()} == {f"ftlab-base-{t}.gguf" for t in ("f16", "q8_0", "q4_k_m")}
    assert s["sizes_mb"]["q4_k_m"] < s["sizes_mb"]["q8_0"] < s["sizes_mb"]["f16"]
    for c in s["gguf"]:
        assert c["template_matches"] and c["tokens_match"], c
        assert c["prompts_checked"] == 4  # the default gguf_check_seconds leaves a tiny model every prompt
    # a time budget stops once spent (also mid-answer, that prompt not counted), never below 1 prompt
    tok = models.load_tokenizer("tiny-random")
    prompts = [[{"role": "user", "content": f"Question {i}?"}] for i in range(4)]
    q4 = st / "gguf" / "ftlab-base-q4_k_m.gguf"
    quick = export.verify_gguf(q4, "q4_k_m", tok, prompts, [[0]] * 4, 8, budget_s=1e-9)
    assert quick.prompts_checked == 1 and quick.max_tokens == 8
    assert export.verify_gguf(q4, "q4_k_m", tok, prompts, [[0]] * 4, 8).prompts_checked == 4
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"} <= {
        p.name for p in (st / "merged").iterdir()
    }
    gen = json.loads((st / "merged" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == models.load_tokenizer("tiny-random").eos_token_id
    card = (st / "MODEL_CARD.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "apache-2.0" and meta["base_model"].startswith("tiny-random")
    assert meta["datasets"] == ["data/pydoc_qa/sft.jsonl", "data/pydoc_qa/prefs.jsonl"]
    assert set(meta["ftlab"]["input_sha256"]) >= {"data", "train", "eval", "adapter"}
    assert meta["ftlab"]["parameters"]["02_train_sft"]["max_steps"] == 6
    assert "**Warning:** a fine-tuned model can reproduce its training data" in card and "| train |" in card
    assert "ollama create ftlab-base:" in card and s["ollama_commands"]["promote_after_stage_05"].endswith(":latest")
    assert "llama_model_loader" not in (tiny_series / "notebooks" / "04_merge_export.ipynb").read_text()
    assert "llama_model_quantize" in (st / "llama_cpp.log").read_text()  # llama.cpp's log went to the file
    _served_gguf_answers_like_llama_cpp_and_stops(q4, tmp_path_factory.mktemp("srv"), outputs)


def _served_gguf_answers_like_llama_cpp_and_stops(gguf, tmp, outputs):
    """llama.cpp's OpenAI-compatible server on the tiny GGUF: it answers greedily (the same text twice), counts the
    tokens it generated, and is gone (its port closed) once the context ends; stage 05 finds the file by type."""
    import socket

    from ftlab.evaluation import gguf_scoring
    from ftlab.models import llama_server

    log = tmp / "server.log"
    with llama_server.llama_server(gguf, log, n_ctx=512) as url:
        port = int(url.rsplit(":", 1)[1])
        a = llama_server.chat(url, [{"role": "user", "content": "Question 1?"}], 8)
        b = llama_server.chat(url, [{"role": "user", "content": "Question 1?"}], 8)
    assert a.text == b.text and 0 < a.tokens <= 8 and a.seconds > 0
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the server was stopped
    path, adapter, why = gguf_scoring.find_gguf("base", "q4_k_m")
    assert path == gguf and adapter == "dpo" and not why
    # the default local judge: judge_model names a GGUF and no judge_url, so llama.cpp's server is started on it

    from ftlab.evaluation import scoring

    with llama_server.judge_server("", str(gguf), tmp / "judge_server.log") as (url, name):
        j = scoring.pairwise_judge(url, name, ["Q1?", "Q2?"], ["A1.", "A2."], ["x", "y"], ["A1.", "A2."])
    assert j["wins_a"] + j["wins_b"] + j["ties"] == 2 and "llama" in (tmp / "judge_server.log").read_text().lower()
    with pytest.raises(FileNotFoundError, match="expected a GGUF file to serve with llama.cpp's server, found no file"):
        with llama_server.judge_server("", "nope.gguf", tmp / "judge_server.log"):
            pass
    assert (
        gguf_scoring.find_gguf("base", "q6_k")[0] is None
        and "wrote no q6_k GGUF" in gguf_scoring.find_gguf("base", "q6_k")[2]
    )


def test_the_deployed_gate_allows_a_set_gap_to_the_hf_model():
    from ftlab.evaluation import gguf_scoring

    d = {"gguf": "m-q4_k_m.gguf", "rouge_l": 0.26, "hf_rouge_l": 0.30, "stopped_share": 0.9, "hf_stopped_share": 1.0}
    assert gguf_scoring.gate(d, rouge_tol=0.05, stop_tol=0.1)["ok"]
    g = gguf_scoring.gate({**d, "rouge_l": 0.2}, rouge_tol=0.05, stop_tol=0.1)
    assert not g["ok"] and g["why"].startswith("m-q4_k_m.gguf: ROUGE-L 0.200 vs HF 0.300 (allowed -0.05)")
    assert not gguf_scoring.gate({**d, "stopped_share": 0.5}, 0.05, 0.1)["ok"]  # a GGUF that runs on is not deployable


def test_the_deployed_gguf_answers_within_its_time_budget_but_at_least_eight_prompts(tmp_path, monkeypatch):
    """An 8B GGUF on a CPU build answers a few tokens a second: stage 05 stops asking once deployed_seconds is spent,
    never before 8 prompts, and 0 asks them all."""
    import contextlib
    import time
    from types import SimpleNamespace

    from ftlab.evaluation import gguf_scoring
    from ftlab.models import llama_server

    clock = {"t": 0.0}
    monkeypatch.setattr(time, "time", lambda: clock["t"])
    monkeypatch.setattr(llama_server, "llama_server", lambda *a, **k: contextlib.nullcontext("http://x"))

    def chat(url, prompt, max_tokens):
        clock["t"] += 10.0  # every answer takes 10 s
        return llama_server.Reply(prompt[-1]["content"], True, 4, 10.0)

    monkeypatch.setattr(llama_server, "chat", chat)
    st = SimpleNamespace(params={"max_length": 64, "max_new_tokens": 8}, path=lambda n: tmp_path / n)
    pairs = [([{"role": "user", "content": f"q{i}"}], "r") for i in range(32)]
    assert len(gguf_scoring.answer(Path("m.gguf"), pairs, st, budget_s=45)) == 8  # at least 8
    assert (
        len(gguf_scoring.answer(Path("m.gguf"), pairs, st, budget_s=125)) == 13
    )  # the 13th answer ended at 130 s > 125 s
    assert len(gguf_scoring.answer(Path("m.gguf"), pairs, st, budget_s=0)) == 32


def test_the_merge_check_runs_on_a_gpu_only_where_the_16_bit_weights_fit(tmp_path, monkeypatch):
    """The merge stays on the CPU; its greedy check moves to the GPU when the card has room (2 minutes a prompt on
    CPU cores at 8B, seconds on a GPU), and stays on the CPU when the card is too small or absent."""
    import importlib

    import torch

    merge = importlib.import_module("ftlab.export.merge")  # the module; ftlab.export.merge is also the function
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert merge.check_device(tmp_path) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1300, 10_000))
    assert merge.check_device(tmp_path) == "cuda"  # 1,000 bytes x 1.25 margin fit in 1,300 free
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1200, 10_000))
    assert merge.check_device(tmp_path) == "cpu"


def test_the_merge_check_batches_its_answers_on_a_gpu_and_padding_leaves_them_unchanged():
    """On a GPU the check generates 8 prompts at a time (one at a time took 230 s at 8B); left padding must not change
    a greedy answer, which fp32 on the tiny model shows exactly."""
    import importlib

    merge_mod = importlib.import_module("ftlab.export.merge")  # the module; ftlab.export.merge is also the function
    assert merge_mod.check_batch("cuda") == 8 and merge_mod.check_batch("cpu") == 1
    tok, model = models.load_tokenizer("tiny-random"), models.load_model("tiny-random")
    prompts = [[{"role": "user", "content": "Hi" + " there" * i + "?"}] for i in range(5)]  # different lengths
    one = export.greedy_tokens(model, tok, prompts, 8)
    assert export.greedy_tokens(model, tok, prompts, 8, batch_size=4) == one and all(one)


def test_stage_04_checks_the_disk_before_writing_and_says_what_each_file_takes(tiny_series, tmp_path):
    import torch

    st = tiny_series / "04_merge_export"
    base = models.resolve_model("tiny-random")
    n = export.parameter_count(base)
    merged = sum(f.stat().st_size for f in (st / "merged").glob("*.safetensors"))
    assert abs(n * 4 - merged) / merged < 0.01  # the tiny series merges in float32 on a CPU: 4 bytes a weight
    f16 = (st / "gguf" / "ftlab-base-f16.gguf").stat().st_size
    room = export.disk_room(base, torch.float32, ["f16", "q8_0"])
    assert 0.8 < room["f16 GGUF"] / f16 < 1.25, (room, f16)  # the estimate against the file the series wrote
    assert room["q8_0 GGUF"] < room["f16 GGUF"] and set(room) == {"merged float32", "f16 GGUF", "q8_0 GGUF"}
    line = export.check_disk_room(base, torch.float32, ["f16", "q8_0"], tmp_path, free_bytes=2**40)
    assert line.startswith("disk: stage 04 needs about ") and "merged float32" in line and "q8_0 GGUF" in line
    assert "quantizer's input" in export.check_disk_room(base, torch.float32, ["q4_k_m"], tmp_path, free_bytes=2**40)
    with pytest.raises(export.ExportError, match=r"0 MB free\. Free some space, .* fewer gguf_types"):
        export.check_disk_room(base, torch.float32, ["f16"], tmp_path / "out", free_bytes=1000)
    assert list((tmp_path / "out").iterdir()) == []  # refused before anything was written
    assert "disk: stage 04 needs about" in (tiny_series / "notebooks" / "04_merge_export.ipynb").read_text()
