"""A small file of state the gateway keeps in its data directory across restarts (the limits and the
issued keys it last knew), replaced whole so a reader never sees half of one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def replace_file(path: Path, data: bytes) -> bool:
    """Writes `data` to `path` atomically; False (logged) if it could not."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return True
    except OSError as error:
        log.warning("could not keep %s: %s", path, error)
        return False
