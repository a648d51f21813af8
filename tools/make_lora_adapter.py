"""Makes a PEFT LoRA adapter with random, non-zero weights for a Hugging Face causal LM folder (the tests'
adapter on the embedded SmolLM2): greedy output with it measurably differs from the base model's.

    python -m tools.make_lora_adapter BASE_FOLDER OUT_FOLDER [--rank 8] [--seed 0]"""

from __future__ import annotations

import argparse
from pathlib import Path


def make_lora_adapter(base: Path, target: Path, rank: int = 8, seed: int = 0, random_base: bool = False) -> Path:
    """Made once: an existing adapter folder is returned as it is. `random_base`: on a model made from the
    folder's config alone (its weights need not be there), for an adapter of that shape."""
    if (target / "adapter_config.json").is_file():
        return target
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from services.engine.prepare_model import write_model_folder

    torch.manual_seed(seed)
    if random_base:
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    # init_lora_weights=False: both matrices random (PEFT's default zeroes B, which changes nothing).
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return write_model_folder(target, get_peft_model(model, config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_lora_adapter(args.base, args.out, args.rank, args.seed))


if __name__ == "__main__":
    main()
