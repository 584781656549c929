"""Management tools: topics, webhooks, publishing events, reading topics, dead-letter replay."""
