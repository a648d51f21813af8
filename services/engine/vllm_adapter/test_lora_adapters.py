"""The checks an adapter folder passes before vLLM reads it."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.engine.errors import InvalidRequestError
from services.engine.vllm_adapter.lora_adapters import check_fits_base, peft_rank, tensor_shapes

CONFIG = SimpleNamespace(
    hidden_size=576, num_attention_heads=9, head_dim=64, num_key_value_heads=3, intermediate_size=1536
)


def adapter(folder: Path, rank: int, shapes: dict[str, list[int]], config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config or {"peft_type": "LORA", "r": rank}))
    header = {n: {"dtype": "F32", "shape": s, "data_offsets": [0, 0]} for n, s in shapes.items()}
    raw = json.dumps(header).encode()
    (folder / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return folder


def q_proj(width_in: int, width_out: int, rank: int = 8) -> dict[str, list[int]]:
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {f"{prefix}.lora_A.weight": [rank, width_in], f"{prefix}.lora_B.weight": [width_out, rank]}


def test_a_fitting_adapter_passes(tmp_path: Path) -> None:
    folder = adapter(tmp_path / "a", 8, q_proj(576, 576))
    assert peft_rank(str(folder)) == 8
    assert tensor_shapes(folder / "adapter_model.safetensors")[next(iter(q_proj(576, 576)))] == [8, 576]
    check_fits_base(str(folder), "base", CONFIG)


@pytest.mark.parametrize(
    "shapes, words",
    [
        (q_proj(128, 576), "takes 128 features"),
        (q_proj(576, 128), "takes 128 features"),
        ({"x.mystery.lora_A.weight": [8, 100]}, "[192, 576, 1536]"),
    ],
)
def test_another_models_adapter_is_refused(tmp_path: Path, shapes: dict, words: str) -> None:
    with pytest.raises(InvalidRequestError, match="made for another model") as caught:
        check_fits_base(str(adapter(tmp_path / "a", 8, shapes)), "base", CONFIG)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    "config, words",
    [
        ({"peft_type": "PREFIX_TUNING", "r": 8}, "not a LoRA adapter"),
        ({"peft_type": "LORA"}, "no positive rank"),
        ({"peft_type": "LORA", "r": 0}, "no positive rank"),
    ],
)
def test_a_folder_that_is_no_lora_adapter_is_refused(tmp_path: Path, config: dict, words: str) -> None:
    with pytest.raises(InvalidRequestError, match=words):
        peft_rank(str(adapter(tmp_path / "a", 8, {}, config)))


def test_no_config_no_weights_or_a_broken_header(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="not a PEFT adapter folder"):
        peft_rank(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    with pytest.raises(InvalidRequestError, match="no adapter weights"):
        peft_rank(str(tmp_path))
    (tmp_path / "adapter_model.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(InvalidRequestError, match="not plausible"):
        tensor_shapes(tmp_path / "adapter_model.safetensors")
