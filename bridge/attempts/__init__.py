"""What happened to deliveries: attempt records read back as a per-webhook log and its stats."""
