"""Sampling one process with py-spy (native frames off) and splitting its busy samples by the part of the
serving path their innermost Python frame belongs to (the first part whose marks match the frame)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

Parts = tuple[tuple[str, tuple[str, ...]], ...]
# Frames where a thread waits rather than works.
IDLE = ("select", "epoll", "poll", "_run_once (uvloop", "wait (threading", "_worker (concurrent")


@contextmanager
def sampling(pid: int, raw: Path, rate: int = 250, native: bool = False) -> Iterator[None]:
    """`native`: C frames too (where time under the event loop goes: gRPC's core, protobuf, the loop)."""
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "-p",
            str(pid),
            "-r",
            str(rate),
            "-f",
            "raw",
            # py-spy unwinds C stacks only while the process is paused.
            "-o",
            str(raw),
            *(["--native"] if native else ["--nonblocking"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def split(raw: Path, parts: Parts, per_unit: float, skip: Callable[[str], bool] = lambda leaf: False) -> dict:
    """The busy samples by part: each part's share, and its cost in the unit `per_unit` is given in
    (the process's CPU per token, say)."""
    counts: dict[str, int] = {}
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        if any(word in leaf for word in IDLE) or skip(leaf):
            continue
        busy += int(count)
        part = next((name for name, marks in parts if any(m in leaf for m in marks)), "other")
        counts[part] = counts.get(part, 0) + int(count)
    return {
        "busy_samples": busy,
        "parts": {
            name: {"share": round(n / busy, 3), "per_token": round(per_unit * n / busy, 4)}
            for name, n in sorted(counts.items(), key=lambda item: -item[1])
        },
    }
