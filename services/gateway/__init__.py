"""The gateway: OpenAI's REST API over the engine's gRPC stream."""
