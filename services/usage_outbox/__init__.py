"""Usage events on their way to metering, shared by the two services that make them (the gateway, for
the requests it answers; the engine, for callers that do not bill their own): a SQLite outbox committed
before the caller is answered, and a sender that delivers it in batches until metering acknowledges."""
