"""Topic declarations and JSON Schemas: data, loaded by :mod:`bridge.topics` and :mod:`bridge.schemas`."""
