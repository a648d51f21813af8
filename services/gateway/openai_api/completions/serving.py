"""A completions body -> one engine GenerateRequest per prompt."""

from __future__ import annotations

from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.openai_api.completions.protocol import CompletionRequest
from services.gateway.openai_api.translate import sampling_params


def completion_requests(body: CompletionRequest, request_id: str) -> list[pb.GenerateRequest]:
    """One engine request per prompt; ids are `<request_id>-<i>` when there are several."""
    prompts = body.prompts()
    sampling = sampling_params(body, body.max_tokens, body.logprobs, body.response_format)
    requests = []
    for i, prompt in enumerate(prompts):
        rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
        request = pb.GenerateRequest(request_id=rid, model=body.model, sampling=sampling)
        if isinstance(prompt, str):
            request.text = prompt
        else:
            request.token_ids.ids.extend(prompt)
        requests.append(request)
    return requests
