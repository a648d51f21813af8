"""The operators' CLI for model management, with Xinference's verbs, over the gateway's REST API:

    python -m services.gateway.fleet registrations [-t LLM]
    python -m services.gateway.fleet register -t LLM --file model.json
    python -m services.gateway.fleet launch -n SmolLM2-tiny-random [-u UID] [-r REPLICAS]
        [--engine-arg max_model_len=512]
    python -m services.gateway.fleet list
    python -m services.gateway.fleet terminate -u UID

The endpoint comes from -e / $LLMSERVE_ENDPOINT (default http://127.0.0.1:8000), the key from
--api-key / $LLMSERVE_API_KEY (an admin key for register, launch and terminate)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
# Launches take tens of seconds on CPU.
LAUNCH_TIMEOUT_SECONDS = 900.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.gateway.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-e", "--endpoint", default=os.environ.get("LLMSERVE_ENDPOINT", DEFAULT_ENDPOINT))
    parser.add_argument("--api-key", default=os.environ.get("LLMSERVE_API_KEY"))
    verbs = parser.add_subparsers(dest="verb", required=True)
    registrations = verbs.add_parser("registrations", help="what can be launched")
    registrations.add_argument("-t", "--model-type", default="LLM")
    register = verbs.add_parser("register", help="register a custom model (Xinference's JSON)")
    register.add_argument("-t", "--model-type", default="LLM")
    register.add_argument("--file", type=Path, required=True)
    unregister = verbs.add_parser("unregister", help="remove a custom registration")
    unregister.add_argument("-t", "--model-type", default="LLM")
    unregister.add_argument("-n", "--model-name", required=True)
    launch = verbs.add_parser("launch", help="launch a registered model")
    launch.add_argument("-n", "--model-name", required=True)
    launch.add_argument("-u", "--model-uid")
    launch.add_argument("-r", "--replica", type=int, default=1)
    launch.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a vLLM engine argument for this launch (value as JSON, or a plain string)",
    )
    verbs.add_parser("list", help="running models")
    terminate = verbs.add_parser("terminate", help="stop a running model")
    terminate.add_argument("-u", "--model-uid", required=True)
    return parser


def _engine_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--engine-arg {pair!r}: use NAME=VALUE")
        try:
            args[name] = json.loads(value)
        except json.JSONDecodeError:
            args[name] = value
    return args


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = client.request(method, path, **kwargs)
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise SystemExit(f"{method} {path}: {response.status_code} {message}")
    return response.json()


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows])


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.endpoint, headers=headers, timeout=LAUNCH_TIMEOUT_SECONDS) as client:
        if args.verb == "registrations":
            rows = _call(client, "GET", f"/v1/model_registrations/{args.model_type}", params={"detailed": "true"})
            print(
                _table(
                    [
                        [
                            r["model_name"],
                            "yes" if r["is_builtin"] else "no",
                            ",".join(r["model_ability"]),
                            r["model_specs"][0]["model_uri"],
                        ]
                        for r in rows
                    ],
                    ["NAME", "BUILTIN", "ABILITIES", "SOURCE"],
                )
            )
        elif args.verb == "register":
            _call(
                client,
                "POST",
                f"/v1/model_registrations/{args.model_type}",
                json={"model": args.file.read_text(), "persist": True},
            )
            print(f"registered {json.loads(args.file.read_text()).get('model_name')}")
        elif args.verb == "unregister":
            _call(client, "DELETE", f"/v1/model_registrations/{args.model_type}/{args.model_name}")
            print(f"unregistered {args.model_name}")
        elif args.verb == "launch":
            body = {
                "model_name": args.model_name,
                "model_uid": args.model_uid,
                "replica": args.replica,
                **_engine_args(args.engine_arg),
            }
            print(_call(client, "POST", "/v1/models", json=body)["model_uid"])
        elif args.verb == "list":
            models = _call(client, "GET", "/v1/models")["data"]
            print(
                _table(
                    [
                        [m["id"], m["model_name"], str(m["replica"]), str(m["context_length"]), m["address"]]
                        for m in models
                    ],
                    ["UID", "NAME", "REPLICAS", "CONTEXT", "ENGINES"],
                )
            )
        elif args.verb == "terminate":
            _call(client, "DELETE", f"/v1/models/{args.model_uid}")
            print(f"terminated {args.model_uid}")
