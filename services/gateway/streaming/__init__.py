"""From the engine's gRPC stream to the client: the engine calls of one request, and OpenAI's SSE chunks
and aggregated responses."""
