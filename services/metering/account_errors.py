"""What a change to keys, teams, organisations or limits can fail with; each message starts with the
field it is about, and services.metering.servicer maps each to its gRPC status."""

from __future__ import annotations


class InvalidChange(ValueError):
    """A change that cannot be made as asked (INVALID_ARGUMENT)."""


class NotFound(LookupError):
    """No such key, team or organisation, or none the caller's scope may see (NOT_FOUND)."""


class AlreadyExists(ValueError):
    """Another one has that name (ALREADY_EXISTS)."""
