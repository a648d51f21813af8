"""Domain errors of the engine; the servicer maps each to one gRPC status."""


class EngineError(Exception):
    """Base of the errors a caller can act on."""


class ModelNotFoundError(EngineError):
    pass


class InvalidRequestError(EngineError):
    pass


class EngineUnavailableError(EngineError):
    """The engine is starting, draining for shutdown, or dead."""


class ModelExistsError(EngineError):
    """A launch named a uid this engine already runs or is loading."""


class LaunchFailedError(EngineError):
    """vLLM could not start a model (out of memory, an unsupported architecture, unreadable weights)."""
