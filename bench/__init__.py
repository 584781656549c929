"""Benchmark harness of webhook-bridge: ``bench/run [--quick] [--only NAME] [--profile NAME]``."""
