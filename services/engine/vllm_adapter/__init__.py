"""The vLLM adapter: GenerationRequests in, AsyncLLM calls, GenerationUpdates out.

`backend` owns one AsyncLLM (lifecycle, requests); `prompts` renders a prompt to the ids vLLM runs;
`sampling` builds SamplingParams; `stream_state` counts one request's tokens and times as outputs
arrive; `failures` maps vLLM's exceptions to the engine's errors."""

from services.engine.vllm_adapter.backend import VllmBackend

__all__ = ["VllmBackend"]
