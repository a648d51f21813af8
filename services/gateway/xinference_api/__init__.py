"""Xinference's REST API for model management (what `xinference-client` calls), over the fleet."""
