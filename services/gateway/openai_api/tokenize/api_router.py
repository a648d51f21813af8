"""POST /tokenize and /detokenize, in vLLM's shapes."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.dependencies import KeyId, Router
from services.gateway.middleware import ENGINE_WORK
from services.gateway.openai_api.dependencies import Images
from services.gateway.openai_api.tokenize import serving
from services.gateway.openai_api.tokenize.protocol import DetokenizeRequest, TokenizeRequest

router = APIRouter(tags=[ENGINE_WORK])


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, requests: Router, image_policy: Images, key_id: KeyId) -> dict:
    return await serving.tokenize(body, requests, image_policy)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, requests: Router, key_id: KeyId) -> dict:
    return await serving.detokenize(body, requests)
