"""ruff lint over the package, the tests and the notebooks.  Run: .venv/bin/python -m pytest tests/test_lint.py"""

import subprocess
import sys

from ftlab.core.paths import repo_root


def test_ruff_is_clean():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "lib", "tests", "notebooks"],
        cwd=repo_root(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
