"""FastAPI dependencies of the OpenAI routes alone: the responder and the image policy."""

from __future__ import annotations

from typing import Annotated

from services.gateway.dependencies import app_state
from services.gateway.openai_api.images import ImagePolicy
from services.gateway.openai_api.respond import Responder

Images = Annotated[ImagePolicy, app_state("image_policy")]
Generate = Annotated[Responder, app_state("responder")]
