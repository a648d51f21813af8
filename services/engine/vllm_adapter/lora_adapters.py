"""The LoRA adapters loaded onto one base model at run time: each is a model name of its own (its requests
run on the base with the adapter, batched with the base's and other adapters' up to vLLM's `max_loras`), and
its usage is counted under its name. A folder is checked before vLLM reads it: a PEFT adapter
(adapter_config.json and its weights) of a rank the base was launched to take."""

from __future__ import annotations

import dataclasses
import json
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


class LoraAdapters:
    def __init__(self) -> None:
        self._by_name: dict[str, Adapter] = {}
        self._next_id = 1

    def get(self, name: str) -> Adapter | None:
        return self._by_name.get(name)

    def infos(self) -> list[ModelInfo]:
        return [a.info for a in self._by_name.values()]

    def new(self, name: str, path: str, base: ModelInfo, max_rank: int) -> Adapter:
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
