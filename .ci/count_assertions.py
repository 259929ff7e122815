"""Count the suite's assertions: `assert` statements plus `pytest.raises`/`pytest.warns` calls, and test functions,
over tests/**/*.py (an AST count; parametrised cases count once). A change that makes the suite cheaper must not
make this smaller. Run: python .ci/count_assertions.py [REPO] [--by-file]"""

import ast
import pathlib
import sys


def count(root: pathlib.Path, by_file: bool = False) -> tuple[int, int]:
    asserts = tests = 0
    for path in sorted(root.glob("tests/**/*.py")):
        tree = ast.parse(path.read_text())
        nodes = list(ast.walk(tree))
        a = sum(isinstance(n, ast.Assert) for n in nodes)
        r = sum(isinstance(n, ast.Call) and getattr(n.func, "attr", "") in ("raises", "warns") for n in nodes)
        f = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test_") for n in nodes)
        asserts, tests = asserts + a + r, tests + f
        if by_file:
            print(f"{path.name:32s} assertions={a + r:4d} tests={f:3d}")
    return asserts, tests


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    a, t = count(pathlib.Path(args[0] if args else "."), "--by-file" in sys.argv)
    print(f"ci: {a} assertions in {t} test functions")
