"""Runs vLLM's serving benchmark (`vllm.benchmarks.serve`) with the given CLI arguments; prints its result as JSON."""

from __future__ import annotations

import json
import sys


def main() -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    result = bench_main(parser.parse_args(sys.argv[1:]))
    keep = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    print("RESULTS " + json.dumps(keep), flush=True)


if __name__ == "__main__":
    main()
