"""Developer tools: stub generation and running the stack locally."""
