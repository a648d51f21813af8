"""Several gateway processes on one port (`GATEWAY_WORKERS=N`): this supervisor runs N workers, each a whole
gateway with its own event loop, engine streams and usage outbox, each listening on the port with
SO_REUSEPORT, so that the kernel spreads new connections over them evenly (one socket shared by all would
let whichever worker wakes first accept every pending connection).

A worker's identity is its slot: slot k keeps `<DATA_DIR>/workers/<k>` (its outbox and instance id), so a
worker that dies is restarted on the same outbox and delivers what it had not; the model catalog stays in
`DATA_DIR`, shared. Prometheus metrics are kept in prometheus_client's multiprocess mode (one folder of
files the workers write and `/metrics` sums, whichever worker answers). SIGTERM (or SIGINT) goes to every
worker, and each drains as a lone gateway does.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.gateway.config import GatewaySettings

log = logging.getLogger(__name__)

# A worker that exits unexpectedly is started again after this pause (not in a tight loop).
RESTART_PAUSE_SECONDS = 1.0


def worker_dir(data_dir: Path, slot: int) -> Path:
    return data_dir / "workers" / str(slot)


class Supervisor:
    def __init__(self, settings: GatewaySettings) -> None:
        if settings.port == 0:
            raise SystemExit("GATEWAY_WORKERS > 1 needs a fixed GATEWAY_PORT: every worker listens on it")
        self._settings = settings
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        self._workers: dict[int, subprocess.Popen] = {}
        self._stopping = False

    def _environment(self, slot: int) -> dict[str, str]:
        settings = self._settings
        env = dict(os.environ)
        env.update(
            {
                "GATEWAY_WORKERS": "1",
                "GATEWAY_REUSE_PORT": "true",
                "GATEWAY_DATA_DIR": str(worker_dir(settings.data_dir, slot)),
                "GATEWAY_CATALOG_DIR": str(settings.catalog_dir or settings.data_dir),
                "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir),
            }
        )
        if settings.instance_id:
            env["GATEWAY_INSTANCE_ID"] = f"{settings.instance_id}-w{slot}"
        return env

    def _start(self, slot: int) -> None:
        self._workers[slot] = subprocess.Popen([sys.executable, "-m", "services.gateway"], env=self._environment(slot))
        log.info("gateway worker %d started (pid %d)", slot, self._workers[slot].pid)

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True
        for process in self._workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("gateway on %s:%d with %d workers", self._settings.host, self._settings.port, self._settings.workers)
        try:
            for slot in range(self._settings.workers):
                self._start(slot)
            while not self._stopping:
                time.sleep(0.2)
                for slot, process in list(self._workers.items()):
                    if process.poll() is not None and not self._stopping:
                        log.error(
                            "gateway worker %d (pid %d) exited with %s; starting it again",
                            slot,
                            process.pid,
                            process.returncode,
                        )
                        _forget_process(self._metrics_dir, process.pid)
                        time.sleep(RESTART_PAUSE_SECONDS)
                        self._start(slot)
            codes = [process.wait() for process in self._workers.values()]
            return max((c for c in codes if c > 0), default=0)
        finally:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def _forget_process(metrics_dir: Path, pid: int) -> None:
    """Drops a dead worker's live gauges (in-flight requests, outbox depth) from the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(metrics_dir))
