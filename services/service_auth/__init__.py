"""Service credentials on the internal gRPC plane.

Every internal caller presents its own bearer token in the `authorization` metadata of each call (as
vLLM's `--api-key` and Kubernetes service-account tokens do). Servers keep only the tokens' SHA-256
digests, each with the caller's name and roles, in a callers file; an interceptor checks every call
against the server's policy (which roles may call which method) before the handler runs. Health and
reflection stay open."""

from services.service_auth.callers import (
    ADMIN,
    ENGINE,
    GATEWAY,
    GENERATE,
    Caller,
    CallerRegistry,
    ReloadingCallers,
    digest,
    read_token,
)
from services.service_auth.interceptor import AuthInterceptor, MethodPolicy, current_caller, interceptor_from_file

__all__ = [
    "ADMIN",
    "ENGINE",
    "GATEWAY",
    "GENERATE",
    "AuthInterceptor",
    "Caller",
    "CallerRegistry",
    "MethodPolicy",
    "ReloadingCallers",
    "current_caller",
    "digest",
    "interceptor_from_file",
    "read_token",
]
