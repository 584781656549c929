"""tests/conftest.py: every test under tests/integration carries the ``integration`` marker and
every test under tests/deploy the ``deploy`` marker, so ``-m "not integration"`` runs none of them
(a ``pytestmark`` in a conftest.py would be ignored)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def collect(*args: str) -> tuple[int, list[str], str]:
    """``pytest --collect-only -q`` in a child process: its exit code, test ids and output."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    return result.returncode, ids, result.stdout + result.stderr


def test_no_integration_or_deploy_test_is_collected_when_deselected() -> None:
    code, ids, output = collect(
        "-m", "not integration and not deploy", "tests/integration", "tests/deploy"
    )
    assert ids == [], output
    assert code == 5, output  # pytest's "no tests collected"
    assert " deselected" in output, output


def test_the_folder_marker_reaches_modules_that_do_not_set_it() -> None:
    # test_outputs.py sets no pytestmark of its own: only the collection hook marks it.
    code, ids, output = collect("-m", "integration", "tests/integration/test_outputs.py")
    assert code == 0, output
    assert ids and all(i.startswith("tests/integration/test_outputs.py::") for i in ids), output
