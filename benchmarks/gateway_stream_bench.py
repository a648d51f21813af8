"""The gateway's own cost per streamed token, against a scripted engine (no model, no vLLM).

A scripted engine process runs steps (one token for every open stream per step, one step every
`--step-ms`); two real gateway processes turn them into OpenAI SSE (usage chunk included) for a client
reading `--concurrency` streams: one carries each stream on its own Generate call (one gRPC message per
token per stream), the other carries them all on one GenerateMany call (each message holds every update
ready). The figure is each gateway process's CPU time per token (user + system, from /proc), so it does
not depend on how busy the shared machine is: tokens/s per core = 1 / (CPU seconds per token). Each
configuration runs `--rounds` times, interleaved; the best round is reported and every round is kept.

    .venv/bin/python -m benchmarks.gateway_stream_bench [--tokens 256] [--requests 64] [--concurrency 16]
        [--step-ms 2] [--profile]

With --profile, one more default round of each gateway runs under py-spy (sampling the gateway process, native frames
off) and the gateway's busy samples are split by the code their innermost Python frame is in, as a
share of the round's CPU and as microseconds per token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.pyspy import sampling, split
from services.contracts.engine_client import EngineClient
from tools.processes import ROOT, ServiceProcess, free_port, gateway_env, http_ok


async def _stream(client: httpx.AsyncClient, tokens: int, continuous: bool, gaps: list[float]) -> int:
    """Reads one stream; returns the tokens it got (a chunk carries several when the engine's steps
    outran the stream, as vLLM merges them), and appends the gaps between its token chunks (seconds) to `gaps`."""
    body = {
        "model": "scripted",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": continuous},
    }
    got = 0
    last = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and '"content":" tok' in line:
                got += line.count(" tok")
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
    return got


async def _load(url: str, requests: int, concurrency: int, tokens: int, continuous: bool) -> list[float]:
    """The inter-token gaps the client saw."""
    limits = httpx.Limits(max_connections=concurrency)
    gaps: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> int:
            async with semaphore:
                return await _stream(client, tokens, continuous, gaps)

        counts = await asyncio.gather(*(one() for _ in range(requests)))
    if min(counts) < tokens:
        raise SystemExit(f"a stream was cut short: {min(counts)} of {tokens} tokens")
    return gaps


def _cpu_seconds(process: psutil.Process, children: bool = True) -> float:
    """The process's CPU, and its live children's (a gateway's workers)."""
    total = 0.0
    for each in (process, *(process.children(recursive=True) if children else ())):
        times = each.cpu_times()
        total += times.user + times.system
    return total


def measure(gateway: ServiceProcess, engine: ServiceProcess, args: argparse.Namespace, continuous: bool) -> dict:
    process, engine_process, client = (psutil.Process(p) for p in (gateway.proc.pid, engine.proc.pid, os.getpid()))
    before = [_cpu_seconds(process), _cpu_seconds(engine_process), _cpu_seconds(client, children=False)]
    started = time.perf_counter()
    gaps = sorted(asyncio.run(_load(gateway.address, args.requests, args.concurrency, args.tokens, continuous)))
    wall = time.perf_counter() - started
    after = [_cpu_seconds(process), _cpu_seconds(engine_process), _cpu_seconds(client, children=False)]
    cpu, engine_cpu, client_cpu = (a - b for a, b in zip(after, before))
    tokens = args.requests * args.tokens
    return {
        # What shares the cores with the gateway: the scripted engine and this process (the client).
        "scripted_engine_cpu_seconds": round(engine_cpu, 3),
        "client_cpu_seconds": round(client_cpu, 3),
        "wall_seconds": round(wall, 3),
        "tokens": tokens,
        "gateway_cpu_seconds": round(cpu, 3),
        "gateway_cpu_us_per_token": round(cpu / tokens * 1e6, 1),
        "tokens_per_gateway_core_second": round(tokens / cpu),
        "wall_tokens_per_second": round(tokens / wall),
        # The gaps between a stream's token chunks as the client saw them; against --step-ms, what the
        # gateway (and the shared cores) added.
        "inter_token_ms_p50": round(1000 * gaps[len(gaps) // 2], 2),
        "inter_token_ms_p99": round(1000 * gaps[int(len(gaps) * 0.99)], 2),
    }


# Where a sample's innermost frame is, by file path: the first match names its part of the serving path.
PROFILE_PARTS = (
    ("protobuf", ("google/protobuf", "_pb2")),
    ("grpc client", ("grpc/", "grpc_", "contracts/")),
    ("metrics", ("prometheus_client", "gateway/metrics")),
    ("tracing", ("opentelemetry", "gateway/telemetry")),
    ("SSE chunks and JSON", ("gateway/streaming", "orjson")),
    ("usage outbox and delivery", ("usage_outbox", "gateway/usage")),
    ("HTTP server (uvicorn, starlette, fastapi)", ("uvicorn", "starlette", "fastapi", "h11", "httptools", "anyio")),
    ("request handling (routes, router, schemas)", ("gateway/",)),
    # Without native frames, time in C under the event loop shows as the loop's own frame.
    ("event loop (asyncio, uvloop, C under them)", ("asyncio", "uvloop")),
    # gRPC's completion-queue poller and other threads, in C.
    ("other threads (gRPC's poller, in C)", ("threading.py",)),
)


def profile(gateway: ServiceProcess, engine: ServiceProcess, args: argparse.Namespace, out: Path) -> dict:
    """One default round under py-spy; the busy samples by part, and what each costs per token (µs)."""
    raw = out.with_suffix(f".{gateway.name}.pyspy.txt")
    with sampling(gateway.proc.pid, raw):
        # Four rounds' worth of requests: enough samples at 250 Hz for shares of a few percent.
        round_ = measure(
            gateway, engine, argparse.Namespace(**{**vars(args), "requests": args.requests * 4}), continuous=False
        )
    found = split(raw, PROFILE_PARTS, round_["gateway_cpu_us_per_token"])
    parts = {name: {"share": v["share"], "us_per_token": v["per_token"]} for name, v in found["parts"].items()}
    return {"round": round_, "busy_samples": found["busy_samples"], "parts": parts, "raw_profile": str(raw)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "gateway_stream.json")
    parser.add_argument("--step-ms", type=float, default=2.0, help="the scripted engine's step interval")
    parser.add_argument("--workers", type=int, default=1, help="GATEWAY_WORKERS of each gateway")
    parser.add_argument(
        "--modes", nargs="+", choices=["per-request", "multiplexed"], default=["per-request", "multiplexed"]
    )
    parser.add_argument("--skip-continuous", action="store_true", help="no rounds with continuous_usage_stats")
    parser.add_argument("--profile", action="store_true", help="one more round under py-spy, split by part")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        engine_port = free_port()
        engine = ServiceProcess(
            "scripted-engine",
            "benchmarks.scripted_engine",
            ["--port", str(engine_port), "--step-ms", str(args.step_ms)],
            logs,
            f"127.0.0.1:{engine_port}",
        )
        gateways: dict[str, ServiceProcess] = {}
        for mode in args.modes:
            multiplexed = "true" if mode == "multiplexed" else "false"
            port = free_port()
            env = gateway_env(
                port,
                engine.address,
                log_level="WARNING",
                multiplex_engine_streams=multiplexed,
                data_dir=str(logs / mode),
                workers=str(args.workers),
            )
            gateways[mode] = ServiceProcess(
                f"gateway-{mode}", "services.gateway", [], logs, f"http://127.0.0.1:{port}", env=env
            )
        try:

            async def engine_up() -> bool:
                async with EngineClient(engine.address) as client:
                    try:
                        return bool(await client.list_models(timeout=2.0))
                    except Exception:  # noqa: BLE001 - not listening yet
                        return False

            engine.wait_ready(engine_up, 60)
            runs: dict[str, list[dict]] = {}
            for mode, gateway in gateways.items():
                gateway.wait_ready(lambda g=gateway: http_ok(f"{g.address}/health"), 60)
                asyncio.run(_load(gateway.address, 8, 4, 16, False))  # warm-up
                runs |= {mode: []} if args.skip_continuous else {mode: [], f"{mode}, continuous-usage": []}
            for _ in range(args.rounds):
                for name in runs:
                    gateway = gateways[name.split(",")[0]]
                    runs[name].append(measure(gateway, engine, args, continuous=name.endswith("continuous-usage")))
            profiled = (
                {mode: profile(g, engine, args, args.out) for mode, g in gateways.items()} if args.profile else None
            )
        finally:
            for gateway in gateways.values():
                gateway.stop()
            engine.stop()
    result = {
        name: min(rs, key=lambda r: r["gateway_cpu_us_per_token"]) | {"all_runs": rs} for name, rs in runs.items()
    }
    for name, r in result.items():
        every = ", ".join(f"{x['gateway_cpu_us_per_token']:.1f}" for x in r["all_runs"])
        print(
            f"{name:<32} gateway CPU {r['gateway_cpu_us_per_token']:>6.1f} us/token (rounds: {every}) = "
            f"{r['tokens_per_gateway_core_second']:>7} tokens/s per core (wall {r['wall_tokens_per_second']} tok/s, "
            f"inter-token p50 {r['inter_token_ms_p50']} ms, p99 {r['inter_token_ms_p99']} ms)"
        )
    if profiled is not None:
        result["profile"] = profiled
        for mode, found in profiled.items():
            print(
                f"\n{mode}: profiled round {found['round']['gateway_cpu_us_per_token']} us/token; busy samples by part:"
            )
            for name, part in found["parts"].items():
                print(f"  {name:<44} {part['share']:>6.1%} {part['us_per_token']:>6.1f} us/token")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, **result}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
