"""Measures the engine alone over gRPC (output tokens/s, TTFT at concurrency 1 and 16) next to vLLM's
offline `LLM.generate` with the same model, settings and prompts, in the same run.

    .venv/bin/python -m benchmarks.engine_bench [--model DIR] [--requests-c1 4] [--requests-c16 32]
        [--load-format dummy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmserve.engine.v1 import engine_pb2 as pb

from benchmarks.workload import RunResult, Workload, prompts, summarize
from services.contracts.engine_client import EngineClient
from services.engine.prepare_model import ensure_embedded_model
from tools.processes import ROOT, ServiceProcess, free_port, grpc_serving


async def _one(client: EngineClient, ids: list[int], output_len: int) -> tuple[int, float]:
    request = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=ids),
        sampling=pb.SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0.0),
    )
    started = time.perf_counter()
    ttft = 0.0
    final = None
    async for message in client.generate(request):
        if not ttft and any(c.token_ids for c in message.choices):
            ttft = time.perf_counter() - started
        final = message
    assert final is not None and final.finished
    return final.usage.completion_tokens, ttft


async def run_engine(address: str, workload: Workload, plan: list[tuple[int, int]], vocab: int) -> list[RunResult]:
    async with EngineClient(address) as client:
        await _one(client, prompts(workload, 1, vocab)[0], workload.output_len)
        results = []
        for concurrency, count in plan:
            batch = prompts(workload, count, vocab)
            gate = asyncio.Semaphore(concurrency)

            async def limited(ids: list[int], gate: asyncio.Semaphore = gate) -> tuple[int, float]:
                async with gate:
                    return await _one(client, ids, workload.output_len)

            started = time.perf_counter()
            outcomes = await asyncio.gather(*(limited(ids) for ids in batch))
            elapsed = time.perf_counter() - started
            results.append(
                summarize("engine-grpc", concurrency, sum(t for t, _ in outcomes), elapsed, [f for _, f in outcomes])
            )
        return results


def run_offline(model: str, engine_args: dict, plan: list[tuple[int, int]], workload: Workload) -> list[dict]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.offline_generate",
        "--model",
        model,
        "--engine-args",
        json.dumps(engine_args),
        "--plan",
        json.dumps(plan),
        "--input-len",
        str(workload.input_len),
        "--output-len",
        str(workload.output_len),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"offline baseline failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULTS "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Hugging Face folder; default: the embedded model")
    parser.add_argument("--model-store", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--requests-c1", type=int, default=4)
    parser.add_argument("--requests-c16", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument(
        "--load-format", default="auto", help="dummy: random weights (services/engine/builtin_models.py)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "engine.json")
    args = parser.parse_args()

    model = args.model or str(ensure_embedded_model(args.model_store))
    workload = Workload(args.input_len, args.output_len)
    plan = [(1, args.requests_c1), (16, args.requests_c16)]
    # The same vLLM settings on both sides.
    shared = {
        "enforce_eager": True,
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.3,
        "enable_prefix_caching": True,
        "enable_chunked_prefill": False,
        "dtype": "float32",
        "load_format": args.load_format,
    }

    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(model))
    port = free_port()
    with tempfile.TemporaryDirectory() as logs:
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
                model,
                "--engine-args",
                json.dumps(shared),
            ],
            Path(logs),
            f"127.0.0.1:{port}",
        )
        try:
            engine.wait_ready(lambda: grpc_serving(engine.address), 900)
            ours = [r.as_dict() for r in asyncio.run(run_engine(engine.address, workload, plan, vocab))]
        finally:
            engine.stop()
    baseline = run_offline(model, shared, plan, workload)

    print(f"\nmodel {Path(model).name}, {workload.input_len} in / {workload.output_len} out tokens, greedy, ignore_eos")
    print(f"{'concurrency':>11} {'side':>13} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9}")
    for mine, theirs in zip(ours, baseline):
        for row in (mine, theirs):
            print(
                f"{row['concurrency']:>11} {row['name']:>13} {row['output_tokens_per_second']:>10.1f}"
                f" {row['ttft_median']:>8.3f}s {row['ttft_p99']:>8.3f}s"
            )
        ratio = mine["output_tokens_per_second"] / theirs["output_tokens_per_second"]
        print(f"{'':>11} {'ratio':>13} {ratio:>10.2f}x throughput, engine/offline")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"engine": ours, "offline": baseline, "workload": vars(workload)}, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
