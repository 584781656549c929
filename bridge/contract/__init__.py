"""The public webhook contract: events, their schemas, canonical JSON, the delivery body,
signatures."""
