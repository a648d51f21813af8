"""Who may reach which path, decided from the headers alone, before the body is read or parsed.

API keys guard the OpenAI routes; the admin keys (a subset, by key id) also open /metrics, the API docs
and the model management that changes something (launch, terminate, register, unregister); /health is
open, and so is /v1/cluster/auth, where Xinference's client asks whether to send its key at all. With no keys
configured everything is open (a warning says so at start). An organisation's admin key (issued with the
role org_admin) manages keys, teams and limits within its organisation only: the routes pass its scope
to metering, which refuses anything outside it."""

from __future__ import annotations

from collections.abc import Iterable

from services.gateway.auth import ApiKeys
from services.gateway.errors import ApiError
from services.gateway.issued_keys import IssuedKeys

OPEN_KEY_ID = "anonymous"
OPEN_PATHS = frozenset({"/health", "/v1/cluster/auth"})
# Changing anything under these (any method but GET) needs an admin key.
MANAGEMENT_PREFIXES = (
    "/v1/models",
    "/v1/model_registrations",
    "/v1/limits",
    "/v1/keys",
    "/v1/teams",
    "/v1/organizations",
    "/v1/prices",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
)
# What an organisation's admin may change (within its organisation).
ORG_ADMIN_PREFIXES = ("/v1/limits", "/v1/keys", "/v1/teams", "/v1/organizations")
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class AccessPolicy:
    def __init__(
        self, keys: ApiKeys, admin_key_ids: Iterable[str], metrics_open: bool, issued: IssuedKeys | None = None
    ) -> None:
        """keys: the configured (static) keys, among them the admin keys; issued: those metering issues."""
        self.keys = keys
        self.issued = issued
        self.admin_key_ids = frozenset(admin_key_ids)
        unknown = self.admin_key_ids - keys.key_ids
        if unknown:
            raise ValueError(f"admin key ids {sorted(unknown)} are not configured API keys")
        self.admin_paths = DOC_PATHS if metrics_open else DOC_PATHS | {"/metrics"}
        self.open_paths = OPEN_PATHS | ({"/metrics"} if metrics_open else set())

    def is_operator(self, key_id: str) -> bool:
        """An admin key, or anyone on an open gateway."""
        return self.keys.open or key_id in self.admin_key_ids

    def administered_org(self, key_id: str) -> str | None:
        """The organisation an org_admin key manages; None for any other key."""
        return None if self.issued is None else self.issued.administered_org(key_id)

    def admin_scope(self, key_id: str, what: str) -> str | None:
        """None for the operator, the organisation for an org admin; ApiError 403 for any other key."""
        if self.is_operator(key_id):
            return None
        org = self.administered_org(key_id)
        if org is None:
            raise ApiError(403, f"{what} needs an admin API key.", code="permission_denied")
        return org

    def key_id(self, path: str, authorization: str | None, method: str = "GET") -> str:
        """The caller's key id, or ApiError 401 (no or unknown key) / 403 (not an admin key)."""
        if self.keys.open or path in self.open_paths:
            return OPEN_KEY_ID
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "Missing API key: send `Authorization: Bearer <key>`.", code="invalid_api_key")
        key_id = self.keys.key_id(token)
        if key_id is None and self.issued is not None:
            key_id = self.issued.key_id(token)
        if key_id is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        if key_id not in self.admin_key_ids and (
            path in self.admin_paths or (method != "GET" and path.startswith(MANAGEMENT_PREFIXES))
        ):
            if path in self.admin_paths or not (
                path.startswith(ORG_ADMIN_PREFIXES) and self.administered_org(key_id) is not None
            ):
                raise ApiError(403, f"{method} {path} needs an admin API key.", code="permission_denied")
        return key_id

    def includes_cost(self, key_id: str) -> bool:
        """An issued key may ask for its cost in every response's usage (OpenRouter's shape)."""
        return self.issued is not None and self.issued.includes_cost(key_id)

    def check_model(self, key_id: str, model: str) -> None:
        """ApiError 404 if the key may not use the model (as if it did not exist: names do not leak)."""
        if self.issued is not None and not self.issued.allows(key_id, model):
            raise ApiError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")
