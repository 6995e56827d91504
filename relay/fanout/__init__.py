"""Who hears a transition: SSE streams and feeds, metrics, systemd, webhooks."""
