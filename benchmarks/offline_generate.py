"""The baseline: vLLM's offline `LLM.generate` on the same prompts and settings; prints JSON results."""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.workload import Workload, prompts, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--engine-args", default="{}", help="AsyncEngineArgs as JSON, as the engine got them")
    parser.add_argument("--plan", required=True, help="JSON list of [concurrency, requests]")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    engine_args = json.loads(args.engine_args)
    engine_args.pop("model", None)
    llm = LLM(model=args.model, disable_log_stats=False, **engine_args)
    workload = Workload(args.input_len, args.output_len)
    params = SamplingParams(max_tokens=workload.output_len, ignore_eos=True, temperature=0.0)
    vocab = len(llm.get_tokenizer())
    llm.generate([TokensPrompt(prompt_token_ids=prompts(workload, 1, vocab)[0])], params, use_tqdm=False)
    results = []
    for concurrency, count in json.loads(args.plan):
        batch = [TokensPrompt(prompt_token_ids=p) for p in prompts(workload, count, vocab)]
        ttfts: list[float] = []
        tokens = 0
        started = time.perf_counter()
        # Batches of `concurrency` prompts: at most that many run at once, as with the concurrent client.
        for i in range(0, count, concurrency):
            for output in llm.generate(batch[i : i + concurrency], params, use_tqdm=False):
                tokens += sum(len(o.token_ids) for o in output.outputs)
                if output.metrics is not None:
                    ttfts.append(output.metrics.first_token_latency)
        elapsed = time.perf_counter() - started
        results.append(summarize("vllm-offline", concurrency, tokens, elapsed, ttfts).as_dict())
    print("RESULTS " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
