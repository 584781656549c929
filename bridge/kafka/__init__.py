"""Kafka plumbing: client settings, the worker's outputs, record batches, topic declarations."""
