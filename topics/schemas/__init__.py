"""JSON Schemas of the event envelope, each event type's data, and subscription records."""
