"""Topic declarations and JSON Schemas (data, loaded by bridge.topics and bridge.schemas)."""
