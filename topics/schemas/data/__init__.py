"""JSON Schemas of each event type's ``data`` object."""
