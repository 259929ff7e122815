"""Build the bundled sample dataset `pydoc_qa` from the Python standard library's own docstrings.

    python data/build_pydoc_qa.py            # rewrites data/pydoc_qa/{sft,prefs}.jsonl (Python 3.11)

Each row asks what a public function, class or method of a standard-library module does; the reference answer is
the first paragraph of its docstring (PSF License). Preference rows pair the right paragraph (chosen) with the first
paragraph of a different object of the same module (rejected): a plausible but wrong answer. The output depends
only on the Python version (docstrings change between releases), not on the machine or the run.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import random
import re
import sys
from pathlib import Path

MODULES = (
    "abc argparse array base64 binascii bisect builtins calendar cmath codecs collections contextlib copy csv "
    "dataclasses datetime decimal difflib enum fnmatch fractions functools gc getopt glob gzip hashlib heapq hmac "
    "html inspect io ipaddress itertools json keyword linecache locale logging lzma math mimetypes operator os "
    "os.path pathlib pickle platform pprint queue random re reprlib sched secrets shlex shutil signal socket "
    "statistics string struct subprocess sys tarfile tempfile textwrap threading time timeit token tokenize "
    "traceback types typing unicodedata urllib.parse uuid warnings weakref zipfile zlib"
).split()
QUESTIONS = (
    "What does `{name}` do?",
    "In Python, what is `{name}` for?",
    "Explain `{name}` in one or two sentences.",
    "Describe the Python standard library {kind} `{name}`.",
)
SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*->\s*.*)?$")
OUT = Path(__file__).resolve().parent / "pydoc_qa"


def first_paragraph(obj) -> str | None:
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    for para in re.split(r"\n\s*\n", doc.strip()):
        text = " ".join(line.strip() for line in para.splitlines()).strip()
        if not text or SIGNATURE.match(text) or text.startswith(("Signature:", ">>>")):
            continue
        if ">>>" in text or not (30 <= len(text) <= 400) or not text.isascii():
            return None
        if not text[0].isupper() or text.endswith((":", ",")):
            return None
        return text
    return None


def kind_of(obj) -> str:
    if inspect.isclass(obj):
        return "class"
    if inspect.ismethoddescriptor(obj) or inspect.ismethod(obj) or "." in getattr(obj, "__qualname__", ""):
        return "method"
    return "function"


def entries(modname: str):
    mod = importlib.import_module(modname)
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or not (inspect.isroutine(obj) or inspect.isclass(obj)):
            continue
        if modname != "builtins" and getattr(obj, "__module__", modname) not in (modname, mod.__name__):
            continue  # re-exported from another module: counted there
        yield f"{modname}.{name}" if modname != "builtins" else name, obj
        if inspect.isclass(obj) and modname in ("builtins", "collections", "pathlib", "datetime", "fractions"):
            for mname, meth in sorted(vars(obj).items()):
                if not mname.startswith("_") and inspect.isroutine(meth):
                    yield f"{modname}.{name}.{mname}" if modname != "builtins" else f"{name}.{mname}", meth


def stable_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def build() -> tuple[list[dict], list[dict]]:
    seen_answers: set[str] = set()
    items: list[tuple[str, str, str, str]] = []  # module, name, kind, answer
    for modname in MODULES:
        for name, obj in entries(modname):
            answer = first_paragraph(obj)
            if answer is None or answer in seen_answers:
                continue  # aliases share a docstring; keep the first so the file has no duplicate answers
            seen_answers.add(answer)
            items.append((modname, name, kind_of(obj), answer))
    sft, prefs = [], []
    by_module: dict[str, list[str]] = {}
    for modname, _, _, answer in items:
        by_module.setdefault(modname, []).append(answer)
    all_answers = [a for *_, a in items]
    for modname, name, kind, answer in items:
        question = QUESTIONS[stable_int(name) % len(QUESTIONS)].format(name=name, kind=kind)
        sft.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    "source": f"{name} ({modname}, Python {sys.version_info.major}.{sys.version_info.minor})"})
        pool = [a for a in by_module[modname] if a != answer] or [a for a in all_answers if a != answer]
        rejected = random.Random(stable_int("rejected:" + name)).choice(pool)
        prefs.append({"prompt": question, "chosen": answer, "rejected": rejected})
    return sft, prefs


def main() -> None:
    if sys.version_info[:2] != (3, 11):
        print(f"warning: built on Python {sys.version_info.major}.{sys.version_info.minor}; the committed files "
              "come from 3.11 and docstrings differ between releases", file=sys.stderr)
    sft, prefs = build()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("sft.jsonl", sft), ("prefs.jsonl", prefs)):
        with open(OUT / name, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(sft)} SFT rows, {len(prefs)} preference rows from {len(MODULES)} modules -> {OUT}")


if __name__ == "__main__":
    main()
