"""Usage delivery: the durable outbox, the sender to metering, the engine's hold on usage (confirm and
claim), the events, and the admin CLI for dead letters."""
