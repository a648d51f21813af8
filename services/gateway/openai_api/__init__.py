"""OpenAI's REST API, one folder per resource (chat, completions, embeddings, models, tokenize), each with
its routes (`api_router.py`), its request body (`protocol.py`) and what it does (`serving.py`); what they
share beside them (common body parts, translation, images, the responder)."""
