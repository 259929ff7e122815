"""A notebook's cells as the series reads them: its code cells with their tags, and the `parameters` cell parsed
into names, literal defaults and the comments a reader sees (`ftlab.core.params` validates the values).
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ParamError(ValueError):
    """One or more parameters are unknown, of the wrong type or out of range."""


# ---- reading a notebook's parameters cell ---------------------------------------------------------------


@dataclass(frozen=True)
class DeclaredParam:
    name: str
    default: Any
    comment: str


def parse_parameters_source(source: str) -> list[DeclaredParam]:
    """Parse a parameters cell: one `name = literal  # comment` per line; anything else is an error."""
    tree = ast.parse(source)
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ParamError(
                f"parameters cell line {node.lineno}: expected `name = literal`, found {ast.unparse(node)!r}"
            )
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            raise ParamError(
                f"parameters cell line {node.lineno}: {node.targets[0].id} must be a plain literal "
                f"(str, int, float, bool, None, list), found {ast.unparse(node.value)!r}"
            ) from None
        out.append(DeclaredParam(node.targets[0].id, value, comments.get(node.end_lineno, "")))
    return out


def code_cells(path: Path) -> list[tuple[str, list[str]]]:
    """A notebook's code cells as (source, tags)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    src = [(c["source"], c.get("metadata", {}).get("tags") or []) for c in cells if c["cell_type"] == "code"]
    return [("".join(s) if isinstance(s, list) else s, tags) for s, tags in src]


def notebook_parameters(path: Path) -> list[DeclaredParam]:
    """The declared parameters of a notebook (the one cell tagged `parameters`)."""
    cells = [src for src, tags in code_cells(path) if "parameters" in tags]
    if len(cells) != 1:
        raise ParamError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    return parse_parameters_source(cells[0])
