"""What a request reserves before it runs: its prompt tokens, exactly (the engine renders and counts them,
as it will when the request runs), plus its completion cap for every choice (`max_tokens`, or the rest
of the model's context when it is absent). It reads the fleet without routing: the turn does not move. An
embedding reserves each input at most the model's length
(the engine refuses longer ones), since its usage is settled the moment it is answered."""

from __future__ import annotations

import grpc
from llmserve.engine.v1 import engine_pb2 as pb

from services.gateway.errors import from_grpc
from services.gateway.fleet.engines import EngineFleet


def _max_model_len(fleet: EngineFleet, model: str) -> int:
    card = fleet.card(model)
    return card.max_model_len if card is not None else 0


async def generation_tokens(
    fleet: EngineFleet, requests: list[pb.GenerateRequest], max_tokens: int | None
) -> tuple[int, int]:
    """(prompt tokens, completion cap) over the requests' prompts and choices."""
    prompts = completions = 0
    for request in requests:
        which = request.WhichOneof("prompt")
        if which == "token_ids":
            prompt, context = len(request.token_ids.ids), _max_model_len(fleet, request.model)
        else:
            tokenize = pb.TokenizeRequest(model=request.model)
            if which == "chat":
                tokenize.chat.CopyFrom(request.chat)
                tokenize.add_generation_prompt = True
            else:
                tokenize.text = request.text
                tokenize.add_special_tokens = True
            try:
                reply = await fleet.peek(request.model).client.tokenize(tokenize)
            except grpc.aio.AioRpcError as error:
                raise from_grpc(error) from error
            prompt, context = reply.count, reply.max_model_len
        choices = request.sampling.n or 1
        prompts += prompt
        completions += choices * (max_tokens if max_tokens is not None else max(0, context - prompt))
    return prompts, completions


def embedding_tokens(fleet: EngineFleet, request: pb.EmbedRequest) -> int:
    context = _max_model_len(fleet, request.model)
    return sum(
        len(given.token_ids.ids) if given.WhichOneof("kind") == "token_ids" else context for given in request.inputs
    )
