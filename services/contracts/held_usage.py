"""The caller name under which an engine holds a request's final usage until its caller confirms it:
"<source>/<incarnation>", one name per process of a metered source. Built and read only here."""

from __future__ import annotations


def holder_name(source: str, incarnation: str) -> str:
    return f"{source}/{incarnation}"


def holder_parts(caller: str) -> tuple[str, str]:
    """(source, incarnation) of a holder name; a name without an incarnation is a source of its own."""
    source, _, incarnation = caller.rpartition("/")
    return (source, incarnation) if source else (caller, "")
