"""Are the rare ~1 s stalls in streamed output ours, gRPC's, or the machine's while vLLM works?

Streams 128 small messages, one every 9 ms, over three paths: a minimal grpc.aio server, a plain
asyncio TCP server, and our engine's Generate (tiny random model). Each path is probed while the engine
is idle and while it is busy with a background stream of its own. Reported per path and phase: median
and worst time to the first message, and how many streams had a gap over 200 ms.

    .venv/bin/python -m benchmarks.stream_stalls --streams 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc
from llmserve.engine.v1 import engine_pb2 as pb
from llmserve.engine.v1 import engine_pb2_grpc

from benchmarks.serving_bench import ModelCase, engine_process
from services.engine.builtin_models import make_tiny_model
from services.engine.prepare_model import ensure_embedded_model
from tools.processes import ROOT, free_port

MESSAGES, INTERVAL = 128, 0.009
STALL_SECONDS = 0.2


class _Minimal(engine_pb2_grpc.EngineServiceServicer):
    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):  # noqa: N802
        for _ in range(MESSAGES):
            await asyncio.sleep(INTERVAL)
            yield pb.GenerateResponse(
                request_id=request.request_id, choices=[pb.ChoiceDelta(text="tok", token_ids=[7])]
            )


async def _serve_minimal(grpc_port: int, tcp_port: int) -> None:
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServiceServicer_to_server(_Minimal(), server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()

    async def lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        for _ in range(MESSAGES):
            await asyncio.sleep(INTERVAL)
            writer.write(b"tok\n")
            await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(lines, "127.0.0.1", tcp_port)
    async with tcp:
        await server.wait_for_termination()


def _timed(open_stream: Callable[[], Iterable[object]]) -> list[float]:
    """Arrival times of a stream's messages, counted from just before it is opened."""
    start = time.perf_counter()
    return [time.perf_counter() - start for _ in open_stream()]


def _grpc_probe(address: str, request: pb.GenerateRequest) -> Callable[[], list[float]]:
    stub = engine_pb2_grpc.EngineServiceStub(grpc.insecure_channel(address))
    return lambda: _timed(lambda: stub.Generate(request, timeout=60))


def _tcp_probe(port: int) -> Callable[[], list[float]]:
    def lines() -> Iterator[bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"go\n")
            yield from sock.makefile("rb")

    return lambda: _timed(lines)


def _summary(runs: list[list[float]]) -> dict[str, float]:
    firsts = [r[0] for r in runs]
    worst_gaps = [max([r[0], *(b - a for a, b in zip(r, r[1:]))]) for r in runs]
    return {
        "first_p50_ms": statistics.median(firsts) * 1000,
        "first_max_ms": max(firsts) * 1000,
        "worst_gap_ms": max(worst_gaps) * 1000,
        "stalled": sum(1 for gap in worst_gaps if gap > STALL_SECONDS),
        "streams": len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=20, help="probes per path and phase")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "stalls.json")
    args = parser.parse_args()
    store = ROOT / "var" / "models"
    tiny = make_tiny_model(ensure_embedded_model(store), store)
    grpc_port, tcp_port = free_port(), free_port()
    minimal = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.stream_stalls", "--serve", str(grpc_port), str(tcp_port)], cwd=ROOT
    )
    try:
        case = ModelCase("tiny", tiny, True, 64, MESSAGES, {})
        with tempfile.TemporaryDirectory() as logs, engine_process(case, Path(logs)) as engine_address:
            probes = {
                "minimal grpc.aio": _grpc_probe(f"127.0.0.1:{grpc_port}", pb.GenerateRequest(request_id="x")),
                "plain TCP": _tcp_probe(tcp_port),
                "our engine (gRPC)": _grpc_probe(engine_address, _engine_request(tiny.name)),
            }
            rows: list[dict] = []
            for phase in ("engine idle", "engine busy"):
                load = None
                if phase == "engine busy":
                    load = subprocess.Popen(
                        [sys.executable, "-m", "benchmarks.stream_stalls", "--busy", engine_address, tiny.name],
                        cwd=ROOT,
                    )
                    time.sleep(2)
                try:
                    for name, probe in probes.items():
                        if load is not None and name == "our engine (gRPC)":
                            continue
                        row = {"phase": phase, "path": name, **_summary([probe() for _ in range(args.streams)])}
                        rows.append(row)
                        print(
                            f"{phase:<12} {name:<18} first msg p50 {row['first_p50_ms']:6.1f} ms, "
                            f"max {row['first_max_ms']:6.1f} ms; worst gap {row['worst_gap_ms']:6.0f} ms; "
                            f"stalled {row['stalled']}/{row['streams']}",
                            flush=True,
                        )
                finally:
                    if load is not None:
                        load.terminate()
                        load.wait()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
        print(f"\nwritten to {args.out}")
    finally:
        minimal.terminate()
        minimal.wait()


def _engine_request(model: str) -> pb.GenerateRequest:
    chat = pb.Chat(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hello " * 50)])
    return pb.GenerateRequest(model=model, chat=chat, sampling=pb.SamplingParams(max_tokens=MESSAGES, ignore_eos=True))


def _keep_busy(address: str, model: str) -> None:
    """One stream after another (at most 10 minutes), from its own process so the probes keep their GIL."""
    probe = _grpc_probe(address, _engine_request(model))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        probe()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(_serve_minimal(int(sys.argv[2]), int(sys.argv[3])))
    elif sys.argv[1:2] == ["--busy"]:
        _keep_busy(sys.argv[2], sys.argv[3])
    else:
        main()
