"""The engine service: a gRPC server around vLLM's AsyncLLM."""
