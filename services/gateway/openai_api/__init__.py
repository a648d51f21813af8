"""OpenAI's REST API: chat and text completions, models, and vLLM's tokenize/detokenize; request
schemas and their translation into engine requests."""
