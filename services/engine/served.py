"""What an engine serves: shared by the settings, the model host and the vLLM adapter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServedModel:
    name: str
    root: str
    # The registered model it runs (a launch names it); the served name when the engine started with it.
    model_name: str = ""
