"""A tiny random-weights BERT cross-encoder (BertForSequenceClassification, one label), made locally with
transformers on all-MiniLM-L6-v2's tokenizer: no package on PyPI ships a cross-encoder's weights. Its scores
mean nothing; its shapes, its pair tokenization (token type ids) and its classifier head are real, which is
what tests of rerank and score need: sentence-transformers' `CrossEncoder` on the same folder is the
reference. About 2 MB; made once."""

from __future__ import annotations

from pathlib import Path

from services.contracts.builtin_models import CROSS_ENCODER_NAME
from services.engine.prepare_model import write_model_folder


def make_tiny_cross_encoder(store: Path, tokenizer_folder: str) -> Path:
    target = store / CROSS_ENCODER_NAME
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        # vLLM's CPU attention rejects head_dim 16; 64 works.
        num_attention_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertForSequenceClassification"],
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        # BERT's initial weights (std 0.02) put every score within a hair of 0.5; wider ones spread them, so
        # that an order and a difference of scores can be checked.
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.5)
    return write_model_folder(target, model, tokenizer)
