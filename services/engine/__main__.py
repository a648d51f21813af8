"""Starts the engine: `python -m services.engine [--model DIR] [--port N] ...` (see --help)."""

from __future__ import annotations

import asyncio
import logging

from services.engine.config import EngineSettings
from services.engine.prepare_model import ensure_embedded_model
from services.engine.server import serve
from services.engine.vllm_backend import VllmBackend


def main() -> None:
    settings = EngineSettings(_cli_parse_args=True)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    model_path = settings.model or str(ensure_embedded_model(settings.model_store))

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    engine_args = AsyncEngineArgs(**settings.engine_args_for(model_path, on_cpu=current_platform.is_cpu()))
    backend = VllmBackend(engine_args, settings.served_model(model_path))
    code = asyncio.run(serve(backend, f"{settings.host}:{settings.port}", settings.shutdown_grace_seconds))
    raise SystemExit(code)


# vLLM starts its workers with spawn, which re-imports this module: keep the guard.
if __name__ == "__main__":
    main()
