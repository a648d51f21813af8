"""Domain errors of the engine; the servicer maps each to one gRPC status."""


class EngineError(Exception):
    """Base of the errors a caller can act on."""


class ModelNotFoundError(EngineError):
    pass


class InvalidRequestError(EngineError):
    pass


class EngineUnavailableError(EngineError):
    """The engine is starting, draining for shutdown, or dead."""
