"""Unit tests of the control plane's HTTP API (bridge.api)."""
