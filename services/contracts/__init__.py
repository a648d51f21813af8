"""The contracts as Python, for every caller: typed gRPC clients of the engine and metering, and the
names the engine contract carries (built-in models). Imports only the generated stubs and grpc, and
itself relatively: `make client` ships this folder unchanged as the `llmserve_client` package."""

from .engine_client import EngineClient
from .metering_client import MeteringClient

__all__ = ["EngineClient", "MeteringClient"]
