"""The package type-checks strictly and the code passes the project's lint rules: the type
hints the code relies on stay true, imports stay ordered, no dead import is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_strict_finds_no_error() -> None:
    # setup.cfg's [mypy] section turns on strict mode
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "renum_rt", "server.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_no_error() -> None:
    # pyproject.toml's [tool.ruff] holds the rules: pycodestyle, pyflakes, import order, bugbear, pyupgrade
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "renum_rt", "tests", "bench", "server.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
