"""A tiny random-weights SmolLM2-shaped model (served with load_format=dummy): it makes tokens fast
enough that a benchmark loads the serving path rather than the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TINY_NAME = "SmolLM2-tiny-random"
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
