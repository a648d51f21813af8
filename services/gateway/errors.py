"""OpenAI-shaped errors (Anthropic-shaped on Anthropic's paths), and the one table from the engine's gRPC
statuses to HTTP statuses."""

from __future__ import annotations

from http import HTTPStatus

import grpc


class ApiError(Exception):
    """An error the client gets as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.type = type_ or ERROR_TYPES.get(status, "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict[str, object]:
        """OpenAI's error object; `detail` repeats the message where Xinference's client (and FastAPI's
        own errors) put it."""
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
            "detail": self.message,
        }

    def body_for(self, path: str) -> dict[str, object]:
        """The error in the shape of the API the path belongs to."""
        if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
            kind = ANTHROPIC_TYPES.get(self.status, "api_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        return self.body()


ANTHROPIC_PATH = "/v1/messages"
# Anthropic's error types by HTTP status (its SDK raises its exception classes from the status).
ANTHROPIC_TYPES: dict[int, str] = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.FORBIDDEN: "permission_error",
    HTTPStatus.NOT_FOUND: "not_found_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "request_too_large",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "overloaded_error",
}

ERROR_TYPES: dict[int, str] = {
    HTTPStatus.BAD_REQUEST: "invalid_request_error",
    HTTPStatus.UNAUTHORIZED: "invalid_request_error",
    HTTPStatus.FORBIDDEN: "invalid_request_error",
    HTTPStatus.NOT_FOUND: "invalid_request_error",
    HTTPStatus.METHOD_NOT_ALLOWED: "invalid_request_error",
    HTTPStatus.REQUEST_TIMEOUT: "invalid_request_error",
    HTTPStatus.UNPROCESSABLE_ENTITY: "invalid_request_error",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "invalid_request_error",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "service_unavailable_error",
    HTTPStatus.GATEWAY_TIMEOUT: "timeout_error",
    HTTPStatus.INTERNAL_SERVER_ERROR: "server_error",
}

# The one table: engine gRPC status -> (HTTP status, OpenAI error code).
HTTP_BY_GRPC: dict[grpc.StatusCode, tuple[int, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (HTTPStatus.BAD_REQUEST, None),
    grpc.StatusCode.NOT_FOUND: (HTTPStatus.NOT_FOUND, "model_not_found"),
    grpc.StatusCode.UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "engine_unavailable"),
    # gRPC's own size limits (a message or metadata too large), never a rate limit: the engine answers
    # UNAVAILABLE when it cannot take a request, and a 429 would make OpenAI's SDK retry the same request.
    grpc.StatusCode.RESOURCE_EXHAUSTED: (HTTPStatus.BAD_REQUEST, "request_too_large"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (HTTPStatus.GATEWAY_TIMEOUT, "timeout"),
    grpc.StatusCode.CANCELLED: (HTTPStatus.SERVICE_UNAVAILABLE, "cancelled"),
    # Model management: a uid already in use, and a launch vLLM could not start (its cause in the message).
    grpc.StatusCode.ALREADY_EXISTS: (HTTPStatus.BAD_REQUEST, "model_exists"),
    grpc.StatusCode.FAILED_PRECONDITION: (HTTPStatus.BAD_REQUEST, "launch_failed"),
}


def from_grpc(error: grpc.aio.AioRpcError) -> ApiError:
    status, code = HTTP_BY_GRPC.get(error.code(), (HTTPStatus.INTERNAL_SERVER_ERROR, None))
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return ApiError(status, "The engine failed to handle the request.", code="engine_error")
    if error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (error.details() or "").lower():
        return ApiError(status, "The engine is unreachable.", code=code)
    details = error.details() or status.phrase
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        # OpenAI's code for the refusal clients most often handle; the rest are invalid values.
        code = "context_length_exceeded" if "maximum context length" in details else "invalid_value"
    return ApiError(status, details, code=code)
