"""Talking to OpenAI-compatible chat servers: llama.cpp's own (`llama_cpp.server`, started here on a GGUF to score the
artifact users deploy) and any local judge (Ollama, a llama.cpp server) stage 05 is pointed at.

`llama_server` starts `python -m llama_cpp.server` on 127.0.0.1 with a free port, waits until it answers, and stops
it on exit (also after an error); its log goes to a file, which an error message quotes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@contextlib.contextmanager
def llama_server(gguf: Path, log: Path, n_ctx: int = 2048, start_timeout_s: float = 180.0) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on `gguf` (its CPU build; the chat template embedded in the GGUF), yielding
    its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", str(n_ctx), "--seed", "0"]
    url = f"http://127.0.0.1:{port}"
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    tail = Path(log).read_text(encoding="utf-8", errors="replace")[-1500:]
                    raise ServerError(f"llama_cpp.server exited with {proc.returncode} on {gguf}; its log:\n{tail}")
                try:
                    _get(url + "/v1/models", 2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    if time.time() > deadline:
                        raise ServerError(
                            f"llama_cpp.server did not answer within {start_timeout_s} s; log: {log}"
                        ) from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Reply:
    text: str
    stopped: bool  # finish_reason "stop": the model ended its answer itself, not the max_tokens bound
    tokens: int  # completion tokens, as the server counted them
    seconds: float


def chat(url: str, messages: list[dict[str, str]], max_tokens: int, model: str = "", timeout: float = 120.0) -> Reply:
    """One greedy chat completion (temperature 0, top_k 1) from an OpenAI-compatible server."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "top_k": 1, "seed": 0}
    if model:
        body["model"] = model
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = json.loads(r.read())
    choice = out["choices"][0]
    tokens = (out.get("usage") or {}).get("completion_tokens", 0)
    text = (choice["message"].get("content") or "").strip()
    return Reply(text, choice.get("finish_reason") == "stop", tokens, time.perf_counter() - t)


@contextlib.contextmanager
def judge_server(url: str, model: str, log: Path) -> Iterator[tuple[str, str]]:
    """The pairwise judge's base URL and model name: the server at `url`, or, with no URL, llama.cpp's server started
    here on the GGUF file `model` (absolute, or relative to the repository)."""
    if url:
        yield url, model
        return
    from ftlab.core.paths import repo_root

    gguf = Path(model).expanduser()
    gguf = gguf if gguf.is_absolute() else repo_root() / gguf
    if gguf.suffix != ".gguf" or not gguf.is_file():
        raise FileNotFoundError(
            f"judge_model={model!r} with no judge_url: expected a GGUF file to serve with llama.cpp's server, found "
            f"{'no file' if not gguf.exists() else 'a file that is not .gguf'} at {gguf}; give the path of a .gguf "
            "file, or set judge_url to a running server (Ollama: http://127.0.0.1:11434)"
        )
    with llama_server(gguf, log) as served_url:
        yield served_url, ""  # llama.cpp's server answers with the one model it serves, whatever the name
