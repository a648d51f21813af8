"""Our gateway + engine against vLLM's own OpenAI server, both loaded by vLLM's serving benchmark
(openai-chat backend) at several concurrencies, on the same model, settings and machine, in
interleaved rounds (the best round of each side is reported; every round is kept in the JSON).

Sides: `vllm` is vLLM's server as shipped; `vllm-placed` is the same server with its engine-core
process placed on its CPU worker's cores from outside, as our engine does to its own (so a gain that
comes from that placement alone shows up on both); `ours` is gateway + engine.

    .venv/bin/python -m benchmarks.serving_bench                      # embedded and tiny random model
    .venv/bin/python -m benchmarks.serving_bench --models tiny --concurrency 1 8 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.engine.builtin_models import make_tiny_model
from services.engine.cpu_placement import place_engine_core
from services.engine.prepare_model import ensure_embedded_model
from tools.processes import ROOT, ServiceProcess, free_port, gateway_env, grpc_serving, http_ok


@dataclass(frozen=True)
class ModelCase:
    label: str
    path: Path
    dummy_weights: bool
    input_len: int
    output_len: int
    prompts_per_concurrency: dict[int, int]


def vllm_settings(case: ModelCase) -> dict[str, object]:
    """The vLLM engine settings both sides get (ours applies the CPU ones itself; passed here explicitly)."""
    settings: dict[str, object] = {
        "max_model_len": 2048,
        "enforce_eager": True,
        "gpu_memory_utilization": 0.3,
        "enable_chunked_prefill": False,
        "dtype": "float32",
    }
    if case.dummy_weights:
        settings["load_format"] = "dummy"
    return settings


def _flag(name: str, value: object) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if value is True:
        return [flag]
    if value is False:
        return ["--no-" + name.replace("_", "-")]
    return [flag, str(value)]


def unplace_engine_core(server_pid: int) -> None:
    """Undoes place_engine_core: the engine core may run on every core again, as vLLM ships it."""
    every = list(range(psutil.cpu_count()))
    for child in psutil.Process(server_pid).children():
        if child.cmdline()[:1] and child.cmdline()[0].startswith("VLLM::EngineCore"):
            for thread in child.threads():
                os.sched_setaffinity(thread.id, every)


@contextmanager
def vllm_server(case: ModelCase, logs: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    args = [
        "--model",
        str(case.path),
        "--served-model-name",
        case.path.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for name, value in vllm_settings(case).items():
        args += _flag(name, value)
    server = ServiceProcess("vllm-server", "vllm.entrypoints.openai.api_server", args, logs, f"http://127.0.0.1:{port}")
    try:
        server.wait_ready(lambda: http_ok(f"{server.address}/health"), 900)
        yield server.address, server.proc.pid
    finally:
        server.stop()


@contextmanager
def engine_process(case: ModelCase, logs: Path) -> Iterator[str]:
    """Our engine on the case's model with the same vLLM settings; yields its gRPC address once SERVING."""
    port = free_port()
    engine = ServiceProcess(
        "engine",
        "services.engine",
        [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--model",
            str(case.path),
            "--engine-args",
            json.dumps(vllm_settings(case)),
        ],
        logs,
        f"127.0.0.1:{port}",
    )
    try:
        engine.wait_ready(lambda: grpc_serving(engine.address), 900)
        yield engine.address
    finally:
        engine.stop()


@contextmanager
def our_stack(case: ModelCase, logs: Path) -> Iterator[str]:
    """Engine plus gateway; yields the gateway's URL."""
    with our_gateways(case, logs, {"gateway": {}}) as gateways:
        yield gateways["gateway"].address


@contextmanager
def our_gateways(
    case: ModelCase, logs: Path, settings: dict[str, dict[str, str]]
) -> Iterator[dict[str, ServiceProcess]]:
    """One engine and a gateway in front of it for each entry (name -> GATEWAY_* settings), by name."""
    with engine_process(case, logs) as engine_address:
        gateways: dict[str, ServiceProcess] = {}
        try:
            for name, given in settings.items():
                port = free_port()
                env = gateway_env(port, engine_address, log_level="WARNING", data_dir=str(logs / name), **given)
                gateways[name] = ServiceProcess(name, "services.gateway", [], logs, f"http://127.0.0.1:{port}", env=env)
            for gateway in gateways.values():
                gateway.wait_ready(lambda g=gateway: http_ok(f"{g.address}/health"), 60)
            yield gateways
        finally:
            for gateway in gateways.values():
                gateway.stop()


def load(base_url: str, case: ModelCase, concurrency: int) -> dict:
    prompts = case.prompts_per_concurrency[concurrency]
    command = [
        sys.executable,
        "-m",
        "benchmarks.vllm_serve_client",
        "--backend",
        "openai-chat",
        "--base-url",
        base_url,
        "--endpoint",
        "/v1/chat/completions",
        "--model",
        case.path.name,
        "--tokenizer",
        str(case.path),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(case.input_len),
        "--random-output-len",
        str(case.output_len),
        "--num-prompts",
        str(prompts),
        "--max-concurrency",
        str(concurrency),
        "--ignore-eos",
        "--percentile-metrics",
        "ttft,tpot,itl",
        "--metric-percentiles",
        "50,99",
        "--seed",
        "0",
        "--num-warmups",
        "2",
        "--disable-tqdm",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"benchmark client failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULTS "))


FIELDS = ("output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms")
SIDES = ("vllm", "vllm-placed", "ours")


def report(rows: list[dict], sides: list[str]) -> None:
    print(
        f"\n{'model':<22}{'conc':>5} {'side':<12}{'out tok/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'ITL p50':>9}{'ITL p99':>9}"
    )
    for row in rows:
        for side in sides:
            r = row[side]
            print(
                f"{row['model']:<22}{row['concurrency']:>5} {side:<12}{r['output_throughput']:>10.1f}"
                f"{r['median_ttft_ms']:>9.0f}ms{r['p99_ttft_ms']:>8.0f}ms{r['median_itl_ms']:>7.1f}ms{r['p99_itl_ms']:>7.1f}ms"
            )
        for base in (s for s in sides if s != "ours"):
            ratio = row["ours"]["output_throughput"] / row[base]["output_throughput"]
            ttft = row["ours"]["median_ttft_ms"] / row[base]["median_ttft_ms"]
            p99 = row["ours"]["p99_ttft_ms"] / row[base]["p99_ttft_ms"]
            print(f"{'':<22}{'':>5} ours/{base}: throughput {ratio:.2f}x, TTFT p50 {ttft:.2f}x, p99 {p99:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--models", nargs="+", choices=["embedded", "tiny"], default=["embedded", "tiny"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each side is reported")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "serving.json")
    args = parser.parse_args()

    embedded = ensure_embedded_model(args.model_store)
    cases = {
        "embedded": ModelCase("embedded", embedded, False, 128, 64, {1: 8, 8: 32, 32: 64}),
        "tiny": ModelCase("tiny", make_tiny_model(embedded, args.model_store), True, 64, 128, {1: 32, 8: 128, 32: 256}),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        for label in args.models:
            case = cases[label]
            runs: dict[str, dict[int, list[dict]]] = {side: {} for side in args.sides}
            # Both servers stay up side by side (idle one costs nothing) and the rounds alternate which
            # side goes first, so the drift of a shared machine falls on all alike.
            with vllm_server(case, logs) as (theirs, their_pid), our_stack(case, logs) as ours:
                urls = {"vllm": theirs, "vllm-placed": theirs, "ours": ours}
                for round_ in range(args.rounds):
                    order = args.sides if round_ % 2 == 0 else args.sides[::-1]
                    for c in args.concurrency:
                        for side in order:
                            if side == "vllm-placed":
                                place_engine_core(their_pid)
                            elif side == "vllm":
                                unplace_engine_core(their_pid)
                            runs[side].setdefault(c, []).append(load(urls[side], case, c))
                    print(f"{label}: round {round_ + 1} done", flush=True)
            for c in args.concurrency:
                best = {side: max(runs[side][c], key=lambda r: r["output_throughput"]) for side in runs}
                rows.append(
                    {
                        "model": case.path.name,
                        "concurrency": c,
                        **{side: {f: best[side][f] for f in FIELDS} for side in best},
                        "all_runs": {side: [{f: r[f] for f in FIELDS} for r in runs[side][c]] for side in runs},
                    }
                )
    report(rows, args.sides)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
