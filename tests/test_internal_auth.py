"""The internal plane is closed: every engine and metering RPC, called with no credential, a wrong one
and the wrong role, is refused with the right code, counted, and the secret is never logged; a gateway
with a wrong credential says so in /health-independent errors without leaking it to clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmserve.engine.v1 import engine_pb2 as epb
from llmserve.engine.v1 import engine_pb2_grpc
from llmserve.metering.v1 import metering_pb2 as mpb
from llmserve.metering.v1 import metering_pb2_grpc

from services.engine.server import POLICY as ENGINE_POLICY
from services.metering.server import POLICY as METERING_POLICY
from tests.credentials import ADMIN_TOKEN, GATEWAY_TOKEN, TESTER_TOKEN
from tests.stack import API_KEY, start_gateway, start_metering
from tools.processes import ServiceProcess

WRONG_TOKEN = "not-the-secret-0123456789"

ENGINE_CALLS = {
    "Generate": epb.GenerateRequest(request_id="x", model="m", text="hi"),
    "GenerateMany": epb.GenerateManyRequest(),
    "Embed": epb.EmbedRequest(model="m", inputs=[epb.EmbedInput(text="hi")]),
    "Score": epb.ScoreRequest(model="m", queries=["q"], documents=["d"]),
    "Abort": epb.AbortRequest(request_ids=["x"]),
    "Tokenize": epb.TokenizeRequest(model="m", text="hi"),
    "Detokenize": epb.DetokenizeRequest(model="m", token_ids=[1]),
    "ListModels": epb.ListModelsRequest(),
    "GetLoad": epb.GetLoadRequest(),
    "ConfirmUsage": epb.ConfirmUsageRequest(request_ids=["x"]),
    "ClaimUsage": epb.ClaimUsageRequest(source="s"),
    "LaunchModel": epb.LaunchModelRequest(uid="x"),
    "TerminateModel": epb.TerminateModelRequest(uid="not-running"),
    "LoadAdapter": epb.LoadAdapterRequest(base_model="m", name="a", path="/nowhere"),
    "UnloadAdapter": epb.UnloadAdapterRequest(name="a"),
}
METERING_CALLS = {
    "RecordUsage": mpb.RecordUsageRequest(),
    "StreamUsage": mpb.RecordUsageRequest(),
    "GetTotals": mpb.GetTotalsRequest(),
    "GetUsageSeries": mpb.GetUsageSeriesRequest(),
    "GetCounters": mpb.GetCountersRequest(),
    "GetThroughput": mpb.GetThroughputRequest(),
    "Reserve": mpb.ReserveRequest(),
    "Settle": mpb.SettleRequest(),
    "RenewLease": mpb.RenewLeaseRequest(),
    "SetLimits": mpb.SetLimitsRequest(),
    "ListLimits": mpb.ListLimitsRequest(),
    "GetStanding": mpb.GetStandingRequest(),
    "CreateKey": mpb.CreateKeyRequest(),
    "ListKeys": mpb.ListKeysRequest(),
    "GetKey": mpb.GetKeyRequest(),
    "UpdateKey": mpb.UpdateKeyRequest(),
    "RotateKey": mpb.RotateKeyRequest(),
    "RevokeKey": mpb.RevokeKeyRequest(),
    "WatchKeys": mpb.WatchKeysRequest(),
    "CreateOrganization": mpb.CreateOrganizationRequest(),
    "ListOrganizations": mpb.ListOrganizationsRequest(),
    "GetOrganization": mpb.GetOrganizationRequest(),
    "CreateTeam": mpb.CreateTeamRequest(),
    "UpdateTeam": mpb.UpdateTeamRequest(),
    "ListTeams": mpb.ListTeamsRequest(),
    "GetTeam": mpb.GetTeamRequest(),
    "ImportPrices": mpb.ImportPricesRequest(),
    "ListPrices": mpb.ListPricesRequest(),
}
# What each token may do, by role: the gateway runs work and records usage; the admin reads.
ENGINE_ADMIN = {"ListModels", "GetLoad", "LaunchModel", "TerminateModel", "LoadAdapter", "UnloadAdapter"}
METERING_ADMIN = {"GetTotals", "GetUsageSeries", "GetCounters", "GetThroughput"}
# Limits and keys: gateways enforce them and relay their admins' changes; an admin reads and sets them too.
# Only gateways watch the keys (the hashes a secret is checked against).
METERING_BOTH = (
    {"SetLimits", "ListLimits", "GetStanding"}
    | {f"{verb}Key" for verb in ("Create", "Get", "Update", "Rotate", "Revoke")}
    | {"ListKeys"}
    | {"CreateOrganization", "ListOrganizations", "GetOrganization"}
    | {"CreateTeam", "UpdateTeam", "ListTeams", "GetTeam"}
    | {"ImportPrices", "ListPrices"}
)


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def call(stub: object, method: str, request: object, token: str | None) -> grpc.StatusCode:
    """The status code of one call (OK, or the refusal, or the handler's own error)."""
    try:
        if method in ("StreamUsage", "GenerateMany"):
            # No message is written: the credential is checked on the call's metadata before any message,
            # and grpc-python reports a write that races the server's refusal as INTERNAL, hiding the
            # status the server sent (measured with two busy cores: 29 and 102 of 300 wrong-token calls
            # with one message written, 0 of 600 with none).
            stream = getattr(stub, method)(metadata=bearer(token), timeout=10)
            try:
                await stream.done_writing()
                while await stream.read() is not grpc.aio.EOF:
                    pass
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass
            return await stream.code()
        elif method == "Generate":
            async for _ in stub.Generate(request, metadata=bearer(token), timeout=10):
                pass
        elif method == "WatchKeys":
            # A stream with no end: its first message (every key) is the answer.
            watch = stub.WatchKeys(request, metadata=bearer(token), timeout=10)
            async for _ in watch:
                watch.cancel()
                break
        else:
            await getattr(stub, method)(request, metadata=bearer(token), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def refusals(stub: object, calls: dict, admin_only: set[str]) -> dict[str, dict[str, grpc.StatusCode]]:
    seen: dict[str, dict[str, grpc.StatusCode]] = {}
    for method, request in calls.items():
        wrong_role = GATEWAY_TOKEN if method in admin_only else ADMIN_TOKEN
        if method in admin_only and method in ENGINE_ADMIN | METERING_BOTH:
            wrong_role = None  # both roles may: no wrong role to try
        seen[method] = {
            "none": await call(stub, method, request, None),
            "wrong": await call(stub, method, request, WRONG_TOKEN),
            **({"role": await call(stub, method, request, wrong_role)} if wrong_role else {}),
            "right": await call(stub, method, request, TESTER_TOKEN),
        }
    return seen


def assert_refused(seen: dict[str, dict[str, grpc.StatusCode]]) -> int:
    refused = 0
    for method, codes in seen.items():
        assert codes["none"] == grpc.StatusCode.UNAUTHENTICATED, method
        assert codes["wrong"] == grpc.StatusCode.UNAUTHENTICATED, method
        if "role" in codes:
            assert codes["role"] == grpc.StatusCode.PERMISSION_DENIED, method
        assert codes["right"] not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), method
        refused += len(codes) - 1
    return refused


def failures(exposition: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith(f"{prefix}_auth_failures_total{{")
    )


def assert_no_secret_logged(process: ServiceProcess) -> None:
    log = process.log_path.read_text(errors="replace")
    for secret in (WRONG_TOKEN, GATEWAY_TOKEN, ADMIN_TOKEN, TESTER_TOKEN):
        assert secret not in log


def test_policies_cover_every_rpc() -> None:
    assert {m.rsplit("/", 1)[1] for m in ENGINE_POLICY} == set(ENGINE_CALLS)
    assert {m.rsplit("/", 1)[1] for m in METERING_POLICY} == set(METERING_CALLS)


async def test_engine_refuses_calls_without_the_right_credential(engine_process: ServiceProcess) -> None:
    async with httpx.AsyncClient() as http:
        before = failures((await http.get(engine_process.metrics_url)).text, "engine")
        async with grpc.aio.insecure_channel(engine_process.address) as channel:
            seen = await refusals(engine_pb2_grpc.EngineServiceStub(channel), ENGINE_CALLS, ENGINE_ADMIN)
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        refused = assert_refused(seen)
        after = failures((await http.get(engine_process.metrics_url)).text, "engine")
    assert after - before == refused
    assert_no_secret_logged(engine_process)


async def test_metering_refuses_calls_without_the_right_credential(log_dir: Path, tmp_path: Path) -> None:
    metering = await asyncio.to_thread(start_metering, log_dir, tmp_path, None, "metering-auth")
    try:
        async with grpc.aio.insecure_channel(metering.address) as channel:
            seen = await refusals(
                metering_pb2_grpc.MeteringServiceStub(channel), METERING_CALLS, METERING_ADMIN | METERING_BOTH
            )
        refused = assert_refused(seen)
        async with httpx.AsyncClient() as http:
            assert failures((await http.get(metering.metrics_url)).text, "metering") == refused
        assert_no_secret_logged(metering)
    finally:
        metering.stop()


async def test_gateway_with_a_wrong_credential_is_refused_by_the_engine(
    log_dir: Path, engine_address: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "wrong.token"
    token_file.write_text(WRONG_TOKEN)
    gateway = await asyncio.to_thread(
        start_gateway,
        log_dir,
        engine_address,
        "gateway-wrong-credential",
        True,
        None,
        service_token_file=str(token_file),
    )
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await http.post(
                f"{gateway.address}/v1/chat/completions",
                headers={"Authorization": f"Bearer {API_KEY}"},
                json={
                    "model": "SmolLM2-135M-Instruct",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 2,
                },
            )
        assert reply.status_code == 500
        assert WRONG_TOKEN not in reply.text
        assert_no_secret_logged(gateway)
    finally:
        gateway.stop()


async def test_gateway_checks_the_key_before_the_body_and_bounds_prompt_lists(gateway_url: str) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        for body in (b"{not json", b"[" * 100_000):
            reply = await http.post(
                f"{gateway_url}/v1/completions", content=body, headers={"content-type": "application/json"}
            )
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
        too_many = await http.post(
            f"{gateway_url}/v1/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": "SmolLM2-135M-Instruct", "prompt": ["Hi"] * 65, "max_tokens": 1},
        )
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "prompt"
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert (await http.get(f"{gateway_url}{path}")).status_code == 401
            # The test key is not an admin key.
            assert (
                await http.get(f"{gateway_url}{path}", headers={"Authorization": f"Bearer {API_KEY}"})
            ).status_code == 403
