"""Where the CPU goes at a serving-bound load: CPU seconds of each process (benchmark client, HTTP
frontend or gateway, our engine's gRPC frontend, vLLM's engine core and worker) during one c=32 run of
vLLM's serving benchmark on the tiny model, for vLLM's server (engine core placed as ours places it) and
for ours (its gateway carrying the engine streams on one GenerateMany call, and, as `ours-per-request`, a
second gateway on the same engine with one Generate call per stream), in alternating rounds. When both sides keep
every core busy, the machine is the limit, and the
throughput ratio follows the CPU each side spends per output token.

    .venv/bin/python -m benchmarks.cpu_split [--rounds 2] [--concurrency 32] [--profile]

With --profile, one more run of ours samples the engine's gRPC frontend with py-spy and splits its busy
samples by the part of the serving path their innermost frame is in (CPU ms per output token each).

The worker's share (its CPU seconds over the run's duration) says whether the serving path starves the
model: near 1.0, the worker's core is the limit on either side, and no serving path can go faster.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

import psutil

from benchmarks.pyspy import sampling, split
from benchmarks.serving_bench import ModelCase, load, our_gateways, vllm_server
from services.engine.builtin_models import make_tiny_model
from services.engine.cpu_placement import place_engine_core
from services.engine.prepare_model import ensure_embedded_model
from tools.processes import ROOT


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _vllm_processes(frontend_pid: int, frontend_name: str) -> dict[str, psutil.Process]:
    found = {frontend_name: psutil.Process(frontend_pid)}
    for child in psutil.Process(frontend_pid).children(recursive=True):
        name = (child.cmdline() or [""])[0]
        if name.startswith("VLLM::EngineCore"):
            found["engine core"] = child
        elif name.startswith("VLLM::Worker"):
            found["worker"] = child
    return found


def _pid_of(fragment: str) -> int:
    for process in psutil.process_iter(["pid", "cmdline"]):
        if fragment in " ".join(process.info["cmdline"] or []):
            return process.info["pid"]
    raise LookupError(fragment)


def measure(case: ModelCase, concurrency: int, url: str, processes: dict[str, psutil.Process]) -> dict:
    before = {name: _cpu(p) for name, p in processes.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = load(url, case, concurrency)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = {name: _cpu(p) - before[name] for name, p in processes.items()}
    used["benchmark client"] = (after_children.ru_utime + after_children.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    tokens = result["total_output_tokens"]
    return {
        "output_throughput": result["output_throughput"],
        "duration_s": result["duration"],
        "cpu_seconds": {k: round(v, 2) for k, v in used.items()},
        "cores_busy": sum(used.values()) / result["duration"],
        "worker_busy": used["worker"] / result["duration"],
        "cpu_ms_per_output_token": 1000 * sum(used.values()) / tokens,
    }


# The engine frontend's parts, by the file of a sample's innermost frame (the first match wins).
ENGINE_PARTS = (
    ("protobuf", ("google/protobuf", "_pb2", "upb", "_message.")),
    ("gRPC server (grpc.aio and its core)", ("grpc/", "grpc_", "cygrpc", "libgrpc", "grpc_core", "absl")),
    ("tracing", ("opentelemetry",)),
    ("ours: servicer, model host, stream state, usage", ("services/",)),
    ("vLLM's output processing and detokenizing", ("vllm/v1/engine", "detokeniz", "tokenizers", "transformers")),
    ("vLLM's IPC with its engine core (zmq, msgspec)", ("zmq", "msgspec", "vllm/v1/serial")),
    ("vLLM, other", ("vllm/",)),
    # Without native frames, time in C under the event loop shows as the loop's own frame.
    ("event loop (uvloop, asyncio, C under them)", ("asyncio", "uvloop")),
    ("other threads (gRPC's poller, in C)", ("threading.py",)),
)


def _profile_engine(
    case: ModelCase, concurrency: int, url: str, engine_pid: int, gateway_pid: int, out: Path, native: bool
) -> dict:
    processes = {**_vllm_processes(engine_pid, "engine frontend"), "gateway": psutil.Process(gateway_pid)}
    raw = out.with_suffix(".engine-frontend.pyspy.txt")
    with sampling(engine_pid, raw, native=native):
        run = measure(case, concurrency, url, processes)
    frontend_ms = 1000 * run["cpu_seconds"]["engine frontend"] / (run["output_throughput"] * run["duration_s"])
    found = split(raw, ENGINE_PARTS, frontend_ms)
    print(f"profiled run: engine frontend {frontend_ms:.3f} CPU ms/token; busy samples by part:")
    for name, part in found["parts"].items():
        print(f"  {name:<50} {part['share']:6.1%}  {part['per_token']:.3f} ms/token")
    return {"run": run, "engine_frontend_ms_per_token": round(frontend_ms, 4), **found, "raw_profile": str(raw)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-store", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="default: bench-results/cpu-split-c<concurrency>.json")
    parser.add_argument(
        "--profile", action="store_true", help="one more run of ours with the engine frontend under py-spy"
    )
    parser.add_argument("--native", action="store_true", help="with --profile: sample C frames too")
    args = parser.parse_args()
    embedded = ensure_embedded_model(args.model_store)
    case = ModelCase("tiny", make_tiny_model(embedded, args.model_store), True, 64, 128, {args.concurrency: 256})
    runs: dict[str, list[dict]] = {"vllm-placed": [], "ours": [], "ours-per-request": []}
    gateway_settings = {"ours": {}, "ours-per-request": {"multiplex_engine_streams": "false"}}
    with (
        tempfile.TemporaryDirectory() as tmp,
        vllm_server(case, Path(tmp)) as (theirs, vllm_pid),
        our_gateways(case, Path(tmp), gateway_settings) as gateways,
    ):
        place_engine_core(vllm_pid)
        engine_pid = _pid_of("-m services.engine")
        for _ in range(args.rounds):
            for side in runs:
                if side in gateways:
                    gateway = gateways[side]
                    processes = {
                        **_vllm_processes(engine_pid, "engine frontend"),
                        "gateway": psutil.Process(gateway.proc.pid),
                    }
                    url = gateway.address
                else:
                    processes, url = _vllm_processes(vllm_pid, "vllm frontend"), theirs
                run = measure(case, args.concurrency, url, processes)
                runs[side].append(run)
                print(
                    f"{side:<16} {run['output_throughput']:7.0f} tok/s  cores busy {run['cores_busy']:.2f}"
                    f"  worker busy {run['worker_busy']:.2f}  "
                    f"{run['cpu_ms_per_output_token']:.3f} CPU ms/token  {json.dumps(run['cpu_seconds'])}",
                    flush=True,
                )
        ours = gateways["ours"]
        out = args.out or ROOT / "bench-results" / f"cpu-split-c{args.concurrency}.json"
        profiled = (
            _profile_engine(case, args.concurrency, ours.address, engine_pid, ours.proc.pid, out, args.native)
            if args.profile
            else None
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "cpus": psutil.cpu_count(),
                "runs": runs,
                "engine_frontend_profile": profiled,
            },
            indent=2,
        )
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
