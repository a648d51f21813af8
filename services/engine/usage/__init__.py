"""Every request's usage in the engine, counted once: the totals, the final usage held for a gateway until
it confirms it, that usage's journal on disk, internal callers' events, and who bills what."""
