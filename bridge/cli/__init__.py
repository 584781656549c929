"""The ``webhook-bridge`` command line: the worker, management commands and a test receiver."""

from __future__ import annotations

from bridge.cli.commands import main

__all__ = ["main"]
