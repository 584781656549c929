"""Suite-wide setup: the markers of the integration and deploy folders, and the hypothesis profile.

pytest ignores ``pytestmark`` in a conftest.py, so the folder markers are set on the collected
items here; ``-m "not integration"`` then leaves out every test under tests/integration.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from bridge.worker import embedded

TESTS = Path(__file__).resolve().parent
#: Folder (directly under tests/) -> the marker every test collected below it carries.
FOLDER_MARKERS = {"integration": pytest.mark.integration, "deploy": pytest.mark.deploy}

# One profile for the whole suite, chosen once: fewer examples for a quick local run, more in CI
# (most CI services set CI=true). HYPOTHESIS_PROFILE picks one by name. No example database:
# the tests leave no files behind in the work tree. No deadline: the machines are shared, and a
# slow example is not a failure.
settings.register_profile("dev", max_examples=50, deadline=None, database=None)
settings.register_profile("ci", max_examples=300, deadline=None, database=None)


def _profile() -> str:
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    ci = os.environ.get("CI", "").strip().lower()
    return "ci" if ci not in ("", "0", "false", "no") else "dev"


settings.load_profile(_profile())

#: Interleaved slices of the ports ``free_port`` chooses from: one per pytest process of a run
#: (``./dev test`` runs the integration tests in pytest-xdist workers beside one process of
#: unit tests), so that no two processes hand out one port, which each only guards against
#: within itself (a worker's web port was taken by another process's receiver, 2026-12-07).
PORT_SLICES = 8


def _port_slice() -> int:
    """This process's slice: 0 for a plain pytest run, 1 + n for xdist's worker ``gw<n>``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return (int(worker[2:]) + 1) % PORT_SLICES if worker[2:].isdigit() else 0


def _slice_free_ports() -> None:
    shipped = embedded._unassigned_ports
    index = _port_slice()

    def sliced(range_file: Path = embedded._EPHEMERAL_RANGE) -> range | None:
        ports = shipped(range_file)
        if ports is None or range_file != embedded._EPHEMERAL_RANGE:
            return ports  # a test of free_port itself, with a range of its own
        return ports[index::PORT_SLICES]

    embedded._unassigned_ports = sliced


_slice_free_ports()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:  # a test outside tests/ (pytester's own runs)
            continue
        marker = FOLDER_MARKERS.get(folder)
        if marker is not None:
            item.add_marker(marker)
