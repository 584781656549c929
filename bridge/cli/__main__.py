"""``python -m bridge.cli``: the same as the ``webhook-bridge`` command."""

from __future__ import annotations

import sys

from bridge.cli.commands import main

sys.exit(main())
