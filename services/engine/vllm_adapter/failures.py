"""vLLM's exceptions as the engine's: domain errors before a request's first output, a failed final
update after it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from services.engine.errors import EngineUnavailableError, InvalidRequestError
from services.engine.vllm_adapter.stream_state import StreamState

log = logging.getLogger(__name__)


class FailedAfterStart(Exception):
    """vLLM failed a request that had already produced output."""


async def translate_errors(outputs: AsyncIterator[Any], stream: StreamState) -> AsyncIterator[Any]:
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        async for output in outputs:
            yield output
    except EngineDeadError as exc:
        if stream.started_output:
            raise FailedAfterStart("the engine died during the request") from exc
        raise EngineUnavailableError("the engine is dead") from exc
    except GracefulHTTPError as exc:
        raise EngineUnavailableError(str(exc)) from exc
    except (VLLMClientError, ValueError) as exc:
        if stream.started_output:
            raise FailedAfterStart(str(exc)) from exc
        raise InvalidRequestError(str(exc)) from exc
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if stream.started_output:
            log.exception("request failed after it started")
            raise FailedAfterStart(f"the engine failed the request: {exc.__class__.__name__}") from exc
        raise
