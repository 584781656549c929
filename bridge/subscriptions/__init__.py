"""Webhook subscriptions: the record, its URL, secret encryption, the index and its freshness."""
