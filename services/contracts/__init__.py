"""The contracts as Python, for every caller: typed gRPC clients of the engine and metering, and the
names the engine contract carries (built-in models). Imports only the generated stubs and grpc."""
