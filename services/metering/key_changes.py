"""Key changes between metering replicas on PostgreSQL: each change's transaction sends a NOTIFY on
CHANNEL (delivered when it commits), and every replica LISTENs on a connection of its own, in a thread of
its own, waking its key watch at once. The watch still polls, as a safety net for a lost notification."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

log = logging.getLogger(__name__)

CHANNEL = "llmserve_key_changes"
_RETRY_SECONDS = 1.0
_CHECK_SECONDS = 0.5


class ChangeListener:
    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        """on_change is called from the listener's thread."""
        self._url = url
        self._on_change = on_change
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-changes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        lost = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, application_name="llmserve-key-changes") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if lost:
                        log.info("listening for key changes again")
                        self._on_change()  # whatever was missed meanwhile
                    lost = False
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=_CHECK_SECONDS):
                            self._on_change()
            except psycopg.Error as error:
                if not lost:
                    log.warning("not listening for key changes (the watch polls meanwhile): %s", error)
                lost = True
                self._stopping.wait(_RETRY_SECONDS)
