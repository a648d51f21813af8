"""vLLM's scoring API: `POST /v1/rerank` (Jina's and Cohere's shapes, as vLLM serves them; Xinference's
client calls it) and `POST /v1/score`, on a cross-encoder or an embedding model, each call metered."""
