import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BudgetPeriod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUDGET_PERIOD_UNSPECIFIED: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_TOTAL: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_DAY: _ClassVar[BudgetPeriod]
    BUDGET_PERIOD_MONTH: _ClassVar[BudgetPeriod]

class RequestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REQUEST_STATUS_UNSPECIFIED: _ClassVar[RequestStatus]
    REQUEST_STATUS_OK: _ClassVar[RequestStatus]
    REQUEST_STATUS_ABORT: _ClassVar[RequestStatus]
    REQUEST_STATUS_ERROR: _ClassVar[RequestStatus]

class AckStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACK_STATUS_UNSPECIFIED: _ClassVar[AckStatus]
    ACK_STATUS_RECORDED: _ClassVar[AckStatus]
    ACK_STATUS_DUPLICATE: _ClassVar[AckStatus]
    ACK_STATUS_REJECTED: _ClassVar[AckStatus]

class Bucket(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUCKET_UNSPECIFIED: _ClassVar[Bucket]
    BUCKET_MINUTE: _ClassVar[Bucket]
    BUCKET_HOUR: _ClassVar[Bucket]
    BUCKET_DAY: _ClassVar[Bucket]
BUDGET_PERIOD_UNSPECIFIED: BudgetPeriod
BUDGET_PERIOD_TOTAL: BudgetPeriod
BUDGET_PERIOD_DAY: BudgetPeriod
BUDGET_PERIOD_MONTH: BudgetPeriod
REQUEST_STATUS_UNSPECIFIED: RequestStatus
REQUEST_STATUS_OK: RequestStatus
REQUEST_STATUS_ABORT: RequestStatus
REQUEST_STATUS_ERROR: RequestStatus
ACK_STATUS_UNSPECIFIED: AckStatus
ACK_STATUS_RECORDED: AckStatus
ACK_STATUS_DUPLICATE: AckStatus
ACK_STATUS_REJECTED: AckStatus
BUCKET_UNSPECIFIED: Bucket
BUCKET_MINUTE: Bucket
BUCKET_HOUR: Bucket
BUCKET_DAY: Bucket

class ApiKey(_message.Message):
    __slots__ = ("key_id", "name", "display_prefix", "created_at", "expires_at", "revoked_at", "allowed_models", "metadata", "previous_valid_until", "secret_sha256", "previous_secret_sha256", "version", "team_id", "org_id", "role", "team_allowed_models", "include_cost")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEAM_ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_COST_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    display_prefix: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    previous_valid_until: _timestamp_pb2.Timestamp
    secret_sha256: bytes
    previous_secret_sha256: bytes
    version: int
    team_id: str
    org_id: str
    role: str
    team_allowed_models: _containers.RepeatedScalarFieldContainer[str]
    include_cost: bool
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., display_prefix: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., previous_valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., secret_sha256: _Optional[bytes] = ..., previous_secret_sha256: _Optional[bytes] = ..., version: _Optional[int] = ..., team_id: _Optional[str] = ..., org_id: _Optional[str] = ..., role: _Optional[str] = ..., team_allowed_models: _Optional[_Iterable[str]] = ..., include_cost: _Optional[bool] = ...) -> None: ...

class Organization(_message.Message):
    __slots__ = ("org_id", "name", "time_zone", "created_at", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    name: str
    time_zone: str
    created_at: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, org_id: _Optional[str] = ..., name: _Optional[str] = ..., time_zone: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Team(_message.Message):
    __slots__ = ("team_id", "org_id", "name", "created_at", "allowed_models", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    org_id: str
    name: str
    created_at: _timestamp_pb2.Timestamp
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, team_id: _Optional[str] = ..., org_id: _Optional[str] = ..., name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("price_id", "model_name", "currency", "effective_from", "prompt_micro", "cached_prompt_micro", "completion_micro", "image_micro", "embedding_input_micro")
    PRICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FROM_FIELD_NUMBER: _ClassVar[int]
    PROMPT_MICRO_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_MICRO_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_MICRO_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MICRO_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_INPUT_MICRO_FIELD_NUMBER: _ClassVar[int]
    price_id: str
    model_name: str
    currency: str
    effective_from: _timestamp_pb2.Timestamp
    prompt_micro: int
    cached_prompt_micro: int
    completion_micro: int
    image_micro: int
    embedding_input_micro: int
    def __init__(self, price_id: _Optional[str] = ..., model_name: _Optional[str] = ..., currency: _Optional[str] = ..., effective_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prompt_micro: _Optional[int] = ..., cached_prompt_micro: _Optional[int] = ..., completion_micro: _Optional[int] = ..., image_micro: _Optional[int] = ..., embedding_input_micro: _Optional[int] = ...) -> None: ...

class ImportPricesRequest(_message.Message):
    __slots__ = ("content", "format", "actor")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    content: str
    format: str
    actor: str
    def __init__(self, content: _Optional[str] = ..., format: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class ListPricesRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class ListPricesResponse(_message.Message):
    __slots__ = ("prices", "currency", "refuse_unpriced")
    PRICES_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    REFUSE_UNPRICED_FIELD_NUMBER: _ClassVar[int]
    prices: _containers.RepeatedCompositeFieldContainer[Price]
    currency: str
    refuse_unpriced: bool
    def __init__(self, prices: _Optional[_Iterable[_Union[Price, _Mapping]]] = ..., currency: _Optional[str] = ..., refuse_unpriced: _Optional[bool] = ...) -> None: ...

class CreateOrganizationRequest(_message.Message):
    __slots__ = ("name", "time_zone", "metadata", "actor")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    time_zone: str
    metadata: _containers.ScalarMap[str, str]
    actor: str
    def __init__(self, name: _Optional[str] = ..., time_zone: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., actor: _Optional[str] = ...) -> None: ...

class ListOrganizationsRequest(_message.Message):
    __slots__ = ("scope_org_id",)
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    scope_org_id: str
    def __init__(self, scope_org_id: _Optional[str] = ...) -> None: ...

class ListOrganizationsResponse(_message.Message):
    __slots__ = ("organizations",)
    ORGANIZATIONS_FIELD_NUMBER: _ClassVar[int]
    organizations: _containers.RepeatedCompositeFieldContainer[Organization]
    def __init__(self, organizations: _Optional[_Iterable[_Union[Organization, _Mapping]]] = ...) -> None: ...

class GetOrganizationRequest(_message.Message):
    __slots__ = ("org_id", "scope_org_id")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    scope_org_id: str
    def __init__(self, org_id: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class CreateTeamRequest(_message.Message):
    __slots__ = ("org_id", "name", "allowed_models", "metadata", "actor", "scope_org_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    name: str
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    actor: str
    scope_org_id: str
    def __init__(self, org_id: _Optional[str] = ..., name: _Optional[str] = ..., allowed_models: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., actor: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class UpdateTeamRequest(_message.Message):
    __slots__ = ("team_id", "name", "allowed_models", "replace_allowed_models", "metadata", "replace_metadata", "actor", "scope_org_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REPLACE_METADATA_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    name: str
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    replace_allowed_models: bool
    metadata: _containers.ScalarMap[str, str]
    replace_metadata: bool
    actor: str
    scope_org_id: str
    def __init__(self, team_id: _Optional[str] = ..., name: _Optional[str] = ..., allowed_models: _Optional[_Iterable[str]] = ..., replace_allowed_models: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., replace_metadata: _Optional[bool] = ..., actor: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class ListTeamsRequest(_message.Message):
    __slots__ = ("org_id", "scope_org_id")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    scope_org_id: str
    def __init__(self, org_id: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class ListTeamsResponse(_message.Message):
    __slots__ = ("teams",)
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    teams: _containers.RepeatedCompositeFieldContainer[Team]
    def __init__(self, teams: _Optional[_Iterable[_Union[Team, _Mapping]]] = ...) -> None: ...

class GetTeamRequest(_message.Message):
    __slots__ = ("team_id", "scope_org_id")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    scope_org_id: str
    def __init__(self, team_id: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class IssuedKey(_message.Message):
    __slots__ = ("key", "secret")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    key: ApiKey
    secret: str
    def __init__(self, key: _Optional[_Union[ApiKey, _Mapping]] = ..., secret: _Optional[str] = ...) -> None: ...

class CreateKeyRequest(_message.Message):
    __slots__ = ("name", "expires_at", "allowed_models", "metadata", "actor", "team_id", "org_id", "role", "scope_org_id", "include_cost")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_COST_FIELD_NUMBER: _ClassVar[int]
    name: str
    expires_at: _timestamp_pb2.Timestamp
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    actor: str
    team_id: str
    org_id: str
    role: str
    scope_org_id: str
    include_cost: bool
    def __init__(self, name: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., actor: _Optional[str] = ..., team_id: _Optional[str] = ..., org_id: _Optional[str] = ..., role: _Optional[str] = ..., scope_org_id: _Optional[str] = ..., include_cost: _Optional[bool] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("include_revoked", "scope_org_id", "team_id")
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    scope_org_id: str
    team_id: str
    def __init__(self, include_revoked: _Optional[bool] = ..., scope_org_id: _Optional[str] = ..., team_id: _Optional[str] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class GetKeyRequest(_message.Message):
    __slots__ = ("key_id", "scope_org_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    scope_org_id: str
    def __init__(self, key_id: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class UpdateKeyRequest(_message.Message):
    __slots__ = ("key_id", "name", "expires_at", "clear_expiry", "allowed_models", "replace_allowed_models", "metadata", "replace_metadata", "actor", "team_id", "role", "scope_org_id", "include_cost")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_EXPIRY_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REPLACE_METADATA_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_COST_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    expires_at: _timestamp_pb2.Timestamp
    clear_expiry: bool
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    replace_allowed_models: bool
    metadata: _containers.ScalarMap[str, str]
    replace_metadata: bool
    actor: str
    team_id: str
    role: str
    scope_org_id: str
    include_cost: bool
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clear_expiry: _Optional[bool] = ..., allowed_models: _Optional[_Iterable[str]] = ..., replace_allowed_models: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., replace_metadata: _Optional[bool] = ..., actor: _Optional[str] = ..., team_id: _Optional[str] = ..., role: _Optional[str] = ..., scope_org_id: _Optional[str] = ..., include_cost: _Optional[bool] = ...) -> None: ...

class RotateKeyRequest(_message.Message):
    __slots__ = ("key_id", "grace_seconds", "actor", "scope_org_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    grace_seconds: float
    actor: str
    scope_org_id: str
    def __init__(self, key_id: _Optional[str] = ..., grace_seconds: _Optional[float] = ..., actor: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("key_id", "actor", "scope_org_id")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    actor: str
    scope_org_id: str
    def __init__(self, key_id: _Optional[str] = ..., actor: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class WatchKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KeysUpdate(_message.Message):
    __slots__ = ("full", "keys")
    FULL_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    full: bool
    keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, full: _Optional[bool] = ..., keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class KeyLimits(_message.Message):
    __slots__ = ("api_key_id", "requests_per_minute", "tokens_per_minute", "token_budget", "budget_period", "money_budget_micro")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BUDGET_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    MONEY_BUDGET_MICRO_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    requests_per_minute: int
    tokens_per_minute: int
    token_budget: int
    budget_period: BudgetPeriod
    money_budget_micro: int
    def __init__(self, api_key_id: _Optional[str] = ..., requests_per_minute: _Optional[int] = ..., tokens_per_minute: _Optional[int] = ..., token_budget: _Optional[int] = ..., budget_period: _Optional[_Union[BudgetPeriod, str]] = ..., money_budget_micro: _Optional[int] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("source", "event_id", "api_key_id", "tokens", "lease_seconds", "cost_micro")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_MICRO_FIELD_NUMBER: _ClassVar[int]
    source: str
    event_id: str
    api_key_id: str
    tokens: int
    lease_seconds: float
    cost_micro: int
    def __init__(self, source: _Optional[str] = ..., event_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., tokens: _Optional[int] = ..., lease_seconds: _Optional[float] = ..., cost_micro: _Optional[int] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("granted", "refusal", "reason", "standing")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STANDING_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    refusal: str
    reason: str
    standing: Standing
    def __init__(self, granted: _Optional[bool] = ..., refusal: _Optional[str] = ..., reason: _Optional[str] = ..., standing: _Optional[_Union[Standing, _Mapping]] = ...) -> None: ...

class SettleRequest(_message.Message):
    __slots__ = ("source", "event_id", "tokens", "cost_micro")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICRO_FIELD_NUMBER: _ClassVar[int]
    source: str
    event_id: str
    tokens: int
    cost_micro: int
    def __init__(self, source: _Optional[str] = ..., event_id: _Optional[str] = ..., tokens: _Optional[int] = ..., cost_micro: _Optional[int] = ...) -> None: ...

class SettleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RenewLeaseRequest(_message.Message):
    __slots__ = ("source", "lease_seconds")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    source: str
    lease_seconds: float
    def __init__(self, source: _Optional[str] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetLimitsRequest(_message.Message):
    __slots__ = ("limits", "actor", "scope_org_id")
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    limits: KeyLimits
    actor: str
    scope_org_id: str
    def __init__(self, limits: _Optional[_Union[KeyLimits, _Mapping]] = ..., actor: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class SetLimitsResponse(_message.Message):
    __slots__ = ("standing",)
    STANDING_FIELD_NUMBER: _ClassVar[int]
    standing: Standing
    def __init__(self, standing: _Optional[_Union[Standing, _Mapping]] = ...) -> None: ...

class ListLimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLimitsResponse(_message.Message):
    __slots__ = ("limits",)
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    limits: _containers.RepeatedCompositeFieldContainer[KeyLimits]
    def __init__(self, limits: _Optional[_Iterable[_Union[KeyLimits, _Mapping]]] = ...) -> None: ...

class GetStandingRequest(_message.Message):
    __slots__ = ("api_key_id", "scope_org_id")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_ORG_ID_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    scope_org_id: str
    def __init__(self, api_key_id: _Optional[str] = ..., scope_org_id: _Optional[str] = ...) -> None: ...

class Standing(_message.Message):
    __slots__ = ("api_key_id", "limits", "limited", "requests_last_minute", "tokens_last_minute", "budget_used", "reserved_tokens", "remaining_requests", "remaining_tokens", "remaining_budget", "reset_requests_seconds", "reset_tokens_seconds", "budget_reset_seconds", "money_used_micro", "remaining_money_micro", "level", "levels")
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    LIMITED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_LAST_MINUTE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_USED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_BUDGET_FIELD_NUMBER: _ClassVar[int]
    RESET_REQUESTS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESET_TOKENS_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_RESET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MONEY_USED_MICRO_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MONEY_MICRO_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    limits: KeyLimits
    limited: bool
    requests_last_minute: int
    tokens_last_minute: int
    budget_used: int
    reserved_tokens: int
    remaining_requests: int
    remaining_tokens: int
    remaining_budget: int
    reset_requests_seconds: float
    reset_tokens_seconds: float
    budget_reset_seconds: float
    money_used_micro: int
    remaining_money_micro: int
    level: str
    levels: _containers.RepeatedCompositeFieldContainer[Standing]
    def __init__(self, api_key_id: _Optional[str] = ..., limits: _Optional[_Union[KeyLimits, _Mapping]] = ..., limited: _Optional[bool] = ..., requests_last_minute: _Optional[int] = ..., tokens_last_minute: _Optional[int] = ..., budget_used: _Optional[int] = ..., reserved_tokens: _Optional[int] = ..., remaining_requests: _Optional[int] = ..., remaining_tokens: _Optional[int] = ..., remaining_budget: _Optional[int] = ..., reset_requests_seconds: _Optional[float] = ..., reset_tokens_seconds: _Optional[float] = ..., budget_reset_seconds: _Optional[float] = ..., money_used_micro: _Optional[int] = ..., remaining_money_micro: _Optional[int] = ..., level: _Optional[str] = ..., levels: _Optional[_Iterable[_Union[Standing, _Mapping]]] = ...) -> None: ...

class UsageEvent(_message.Message):
    __slots__ = ("event_id", "source", "occurred_at", "model", "api_key_id", "endpoint", "streamed", "finish_reason", "status", "prompt_tokens", "completion_tokens", "cached_tokens", "time_to_first_token_seconds", "generation_seconds", "request_seconds", "trace_id", "span_id", "model_name", "caller", "images", "embedding_inputs")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STREAMED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_INPUTS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    source: str
    occurred_at: _timestamp_pb2.Timestamp
    model: str
    api_key_id: str
    endpoint: str
    streamed: bool
    finish_reason: str
    status: RequestStatus
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    time_to_first_token_seconds: float
    generation_seconds: float
    request_seconds: float
    trace_id: str
    span_id: str
    model_name: str
    caller: str
    images: int
    embedding_inputs: int
    def __init__(self, event_id: _Optional[str] = ..., source: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., api_key_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., streamed: _Optional[bool] = ..., finish_reason: _Optional[str] = ..., status: _Optional[_Union[RequestStatus, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., time_to_first_token_seconds: _Optional[float] = ..., generation_seconds: _Optional[float] = ..., request_seconds: _Optional[float] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., model_name: _Optional[str] = ..., caller: _Optional[str] = ..., images: _Optional[int] = ..., embedding_inputs: _Optional[int] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[UsageEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[UsageEvent, _Mapping]]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("event_id", "status", "reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    status: AckStatus
    reason: str
    def __init__(self, event_id: _Optional[str] = ..., status: _Optional[_Union[AckStatus, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[Ack]
    def __init__(self, acks: _Optional[_Iterable[_Union[Ack, _Mapping]]] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("to",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: _timestamp_pb2.Timestamp
    def __init__(self, to: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., **kwargs) -> None: ...

class Totals(_message.Message):
    __slots__ = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "ok_requests", "aborted_requests", "failed_requests", "generation_seconds", "cost_micro", "unpriced_requests")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OK_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ABORTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COST_MICRO_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ok_requests: int
    aborted_requests: int
    failed_requests: int
    generation_seconds: float
    cost_micro: int
    unpriced_requests: int
    def __init__(self, requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., ok_requests: _Optional[int] = ..., aborted_requests: _Optional[int] = ..., failed_requests: _Optional[int] = ..., generation_seconds: _Optional[float] = ..., cost_micro: _Optional[int] = ..., unpriced_requests: _Optional[int] = ...) -> None: ...

class GetTotalsRequest(_message.Message):
    __slots__ = ("range", "model", "api_key_id", "group_by_model", "group_by_api_key", "model_name", "group_by_model_name", "caller", "group_by_caller")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_API_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_CALLER_FIELD_NUMBER: _ClassVar[int]
    range: TimeRange
    model: str
    api_key_id: str
    group_by_model: bool
    group_by_api_key: bool
    model_name: str
    group_by_model_name: bool
    caller: str
    group_by_caller: bool
    def __init__(self, range: _Optional[_Union[TimeRange, _Mapping]] = ..., model: _Optional[str] = ..., api_key_id: _Optional[str] = ..., group_by_model: _Optional[bool] = ..., group_by_api_key: _Optional[bool] = ..., model_name: _Optional[str] = ..., group_by_model_name: _Optional[bool] = ..., caller: _Optional[str] = ..., group_by_caller: _Optional[bool] = ...) -> None: ...

class TotalsRow(_message.Message):
    __slots__ = ("model", "api_key_id", "totals", "model_name", "caller")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    model: str
    api_key_id: str
    totals: Totals
    model_name: str
    caller: str
    def __init__(self, model: _Optional[str] = ..., api_key_id: _Optional[str] = ..., totals: _Optional[_Union[Totals, _Mapping]] = ..., model_name: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class GetTotalsResponse(_message.Message):
    __slots__ = ("rows", "currency")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[TotalsRow]
    currency: str
    def __init__(self, rows: _Optional[_Iterable[_Union[TotalsRow, _Mapping]]] = ..., currency: _Optional[str] = ...) -> None: ...

class GetUsageSeriesRequest(_message.Message):
    __slots__ = ("range", "bucket", "model", "api_key_id", "model_name", "caller")
    RANGE_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    range: TimeRange
    bucket: Bucket
    model: str
    api_key_id: str
    model_name: str
    caller: str
    def __init__(self, range: _Optional[_Union[TimeRange, _Mapping]] = ..., bucket: _Optional[_Union[Bucket, str]] = ..., model: _Optional[str] = ..., api_key_id: _Optional[str] = ..., model_name: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class SeriesPoint(_message.Message):
    __slots__ = ("start", "totals")
    START_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    totals: Totals
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., totals: _Optional[_Union[Totals, _Mapping]] = ...) -> None: ...

class GetUsageSeriesResponse(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[SeriesPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[SeriesPoint, _Mapping]]] = ...) -> None: ...

class GetCountersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelCounters(_message.Message):
    __slots__ = ("model", "totals", "events_ingested", "events_duplicated")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_INGESTED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DUPLICATED_FIELD_NUMBER: _ClassVar[int]
    model: str
    totals: Totals
    events_ingested: int
    events_duplicated: int
    def __init__(self, model: _Optional[str] = ..., totals: _Optional[_Union[Totals, _Mapping]] = ..., events_ingested: _Optional[int] = ..., events_duplicated: _Optional[int] = ...) -> None: ...

class GetCountersResponse(_message.Message):
    __slots__ = ("models", "all", "events_ingested", "events_duplicated", "events_rejected", "events_rejected_by_reason", "reservations_without_event", "reservation_tokens_without_event")
    class EventsRejectedByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_INGESTED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DUPLICATED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REJECTED_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    RESERVATIONS_WITHOUT_EVENT_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TOKENS_WITHOUT_EVENT_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelCounters]
    all: Totals
    events_ingested: int
    events_duplicated: int
    events_rejected: int
    events_rejected_by_reason: _containers.ScalarMap[str, int]
    reservations_without_event: int
    reservation_tokens_without_event: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelCounters, _Mapping]]] = ..., all: _Optional[_Union[Totals, _Mapping]] = ..., events_ingested: _Optional[int] = ..., events_duplicated: _Optional[int] = ..., events_rejected: _Optional[int] = ..., events_rejected_by_reason: _Optional[_Mapping[str, int]] = ..., reservations_without_event: _Optional[int] = ..., reservation_tokens_without_event: _Optional[int] = ...) -> None: ...

class GetThroughputRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelThroughput(_message.Message):
    __slots__ = ("model", "tokens_per_second_10s", "tokens_per_second_60s", "tokens_per_generation_second")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_10S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_60S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_GENERATION_SECOND_FIELD_NUMBER: _ClassVar[int]
    model: str
    tokens_per_second_10s: float
    tokens_per_second_60s: float
    tokens_per_generation_second: float
    def __init__(self, model: _Optional[str] = ..., tokens_per_second_10s: _Optional[float] = ..., tokens_per_second_60s: _Optional[float] = ..., tokens_per_generation_second: _Optional[float] = ...) -> None: ...

class GetThroughputResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelThroughput]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelThroughput, _Mapping]]] = ...) -> None: ...
