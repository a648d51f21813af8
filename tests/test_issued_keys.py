"""API keys, teams and organisations issued at run time, with three gateway replicas and two metering
replicas on one PostgreSQL and the session's engine: a key made through one replica works on every replica
within a second, a revoked one is refused by every replica within a second while streams of it run (they
finish and are billed), a rotated secret keeps working for its grace period, a key sees only its own
record, a key (or its team) limited to some models gets a 404 for the others, an organisation's budget
shared by two teams is never overshot by 32 concurrent streams, a team's limit and a key's both bind, an
organisation's admin is refused outside its organisation, bad changes are 4xx naming the field, and the
gateways' keys survive metering's restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from llmserve.metering.v1 import metering_pb2 as mpb

from tests.calls import stream_chat
from tests.credentials import metering_client
from tests.stack import ADMIN_API_KEY, MODEL, metric, start_gateway, start_metering, wait_for, wait_idle
from tools.postgres import PostgresServer
from tools.processes import ServiceProcess, free_port

ADMIN = {"Authorization": f"Bearer {ADMIN_API_KEY}"}
PROPAGATION_SECONDS = 1.0


class Fleet:
    def __init__(self, gateways: list[ServiceProcess], meterings: list[ServiceProcess], restart) -> None:  # noqa: ANN001
        self.gateways = gateways
        self.meterings = meterings
        self.restart = restart

    async def call(self, method: str, path: str, gateway: int = 0, key: str = ADMIN_API_KEY, **kw: object):  # noqa: ANN201
        async with httpx.AsyncClient(timeout=30) as http:
            return await http.request(
                method, f"{self.gateways[gateway].address}{path}", headers={"Authorization": f"Bearer {key}"}, **kw
            )

    async def statuses(self, secret: str) -> list[int]:
        """What each replica answers the secret (GET /v1/models: no engine work)."""
        replies = await asyncio.gather(*(self.call("GET", "/v1/models", i, secret) for i in range(len(self.gateways))))
        return [r.status_code for r in replies]

    async def until_everywhere(self, secret: str, status: int) -> float:
        """Seconds until every replica answers the secret with `status`."""
        started = time.monotonic()

        async def there() -> bool:
            return set(await self.statuses(secret)) == {status}

        await wait_for(there, 30, f"every replica to answer {status}")
        return time.monotonic() - started


@pytest.fixture(scope="module")
def fleet(
    log_dir: Path, tmp_path_factory: pytest.TempPathFactory, engine_address: str, postgres_server: PostgresServer
) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("keys")
    env = {"METERING_DATABASE_URL": postgres_server.create_database("issued_keys")}
    ports = [free_port(), free_port()]

    def metering(i: int, name: str) -> ServiceProcess:
        return start_metering(log_dir, folder / f"m{i}", ports[i], name, env)

    with ThreadPoolExecutor(3) as pool:
        meterings = list(pool.map(lambda i: metering(i, f"metering-keys-{i}"), range(2)))
        gateways = list(
            pool.map(
                lambda i: start_gateway(
                    log_dir,
                    engine_address,
                    f"gateway-keys-{i}",
                    data_dir=str(folder / f"g{i}"),
                    metering_addr="ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports),
                ),
                range(3),
            )
        )
    fleet = Fleet(gateways, meterings, lambda i, name: metering(i, name))
    try:
        yield fleet
    finally:
        for process in (*fleet.gateways, *fleet.meterings):
            process.stop()


async def _issue(fleet: Fleet, name: str, gateway: int = 0, key: str = ADMIN_API_KEY, **fields: object) -> dict:
    reply = await fleet.call("POST", "/v1/keys", gateway, key, json={"name": name, **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()


async def _made(fleet: Fleet, path: str, key: str = ADMIN_API_KEY, **fields: object) -> dict:
    reply = await fleet.call("POST", path, 0, key, json=fields)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def _limits_polls(fleet: Fleet) -> list[float]:
    replies = await asyncio.gather(*(fleet.call("GET", "/metrics", i) for i in range(len(fleet.gateways))))
    return [metric(r.text, "gateway_limits_polls_total") for r in replies]


async def _limit(fleet: Fleet, subject: str, **limits: object) -> dict:
    """Sets them through one replica, then waits until every replica has read the limits twice since (a
    read begun after the change: the key watch tells them at once)."""
    before = await _limits_polls(fleet)
    reply = await fleet.call("PUT", f"/v1/limits/{subject}", 1, json=limits)
    assert reply.status_code == 200, reply.text

    async def read_since() -> bool:
        return all(n >= b + 2 for n, b in zip(await _limits_polls(fleet), before, strict=True))

    started = time.monotonic()
    await wait_for(read_since, 30, "every gateway to read the limits again")
    print(f"\nlimits of {subject} read by every replica after {time.monotonic() - started:.3f} s")
    return reply.json()


async def _stream_status(url: str, key: str, max_tokens: int) -> tuple[int, tuple[int, int] | None]:
    """A streamed chat's status, and its usage chunk's (prompt, completion) when it ran."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count to ten."}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
            usage = None
            async for line in reply.aiter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    u = json.loads(line[6:])["usage"]
                    usage = (u["prompt_tokens"], u["completion_tokens"])
            return reply.status_code, usage


async def test_issued_and_revoked_keys_reach_every_replica_within_a_second(fleet: Fleet, engine_address: str) -> None:
    key = await _issue(fleet, "ci-team-a")
    load = await _issue(fleet, "ci-load")
    assert key["value"].startswith(key["redacted_value"].rstrip("…")) and key["id"].startswith("key_")
    issued_in = await fleet.until_everywhere(key["value"], 200)
    await fleet.until_everywhere(load["value"], 200)
    # Streams of the key running when it is revoked finish, and are billed to it; streams of another key
    # load every replica meanwhile.
    await wait_idle(engine_address)
    running = [asyncio.create_task(stream_chat(fleet.gateways[i % 3].address, key["value"], 32)) for i in range(6)]
    loading = [asyncio.create_task(stream_chat(fleet.gateways[i % 3].address, load["value"], 32)) for i in range(18)]
    await asyncio.sleep(0.3)
    revoked = await fleet.call("DELETE", f"/v1/keys/{key['id']}", 1)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    revoked_in = await fleet.until_everywhere(key["value"], 401)
    usages = await asyncio.gather(*running)
    assert all(u is not None for u in usages), usages
    assert all(u is not None for u in await asyncio.gather(*loading))
    print(f"\nissued: works on 3 replicas after {issued_in:.3f} s; revoked: refused by all after {revoked_in:.3f} s")
    assert issued_in <= PROPAGATION_SECONDS and revoked_in <= PROPAGATION_SECONDS

    async def billed() -> bool:
        async with metering_client(fleet.meterings[0].address) as client:
            rows = await client.totals(mpb.GetTotalsRequest(api_key_id=key["id"]))
        return bool(rows) and rows[0].totals.completion_tokens == sum(u[1] for u in usages)

    await wait_for(billed, 60, "the revoked key's streams to be billed to it")


async def test_a_rotated_secret_works_for_its_grace_period(fleet: Fleet) -> None:
    key = await _issue(fleet, "rotating")
    await fleet.until_everywhere(key["value"], 200)
    reply = await fleet.call("POST", f"/v1/keys/{key['id']}/rotate", 2, json={"grace_seconds": 3})
    assert reply.status_code == 200, reply.text
    rotated = reply.json()
    assert rotated["value"] != key["value"] and rotated["id"] == key["id"]
    await fleet.until_everywhere(rotated["value"], 200)
    assert set(await fleet.statuses(key["value"])) == {200}
    await fleet.until_everywhere(key["value"], 401)
    assert set(await fleet.statuses(rotated["value"])) == {200}


async def test_a_key_reads_only_its_own_record_and_only_its_models(fleet: Fleet) -> None:
    mine = await _issue(fleet, "own-record", allowed_models=["some-other-model"])
    other = await _issue(fleet, "someone-else")
    await fleet.until_everywhere(mine["value"], 200)
    own = await fleet.call("GET", f"/v1/keys/{mine['id']}", 1, mine["value"])
    assert own.status_code == 200 and own.json()["name"] == "own-record" and "value" not in own.json()
    for method, path in (("GET", f"/v1/keys/{other['id']}"), ("GET", "/v1/keys"), ("POST", "/v1/keys")):
        reply = await fleet.call(method, path, 1, mine["value"], json={"name": "x"})
        assert reply.status_code == 403, (method, path, reply.text)
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    chat = await fleet.call("POST", "/v1/chat/completions", 0, mine["value"], json=ask)
    assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found", chat.text
    listed = (await fleet.call("GET", "/v1/keys")).json()["data"]
    assert {k["name"] for k in listed} >= {"own-record", "someone-else"}
    assert all("value" not in k for k in listed)


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"name": "ci-dup"}, 409, "name"),
        ({"name": "expired", "expires_at": 1_000_000}, 400, "expires_at"),
        ({"name": "extra", "owner": "x"}, 400, "owner"),
        ({"name": ""}, 400, "name"),
    ],
)
async def test_bad_key_changes_are_refused_naming_the_field(fleet: Fleet, body: dict, status: int, param: str) -> None:
    if body["name"] == "ci-dup":
        await fleet.call("POST", "/v1/keys", 0, json={"name": "ci-dup"})
    reply = await fleet.call("POST", "/v1/keys", 1, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param, reply.text
    missing = await fleet.call("DELETE", "/v1/keys/key_nope", 2)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"


async def test_known_keys_work_while_metering_is_down_and_the_gateways_resync(fleet: Fleet) -> None:
    key = await _issue(fleet, "survives")
    await fleet.until_everywhere(key["value"], 200)
    for process in fleet.meterings:
        process.signal(signal.SIGKILL)
        process.stop()

    async def watches(state: str) -> bool:
        replies = await asyncio.gather(*(fleet.call("GET", "/health", i) for i in range(3)))
        return all(r.json()["issued_keys"]["watch"] == state for r in replies)

    await wait_for(lambda: watches("disconnected"), 30, "every gateway to see its key watch end")
    assert set(await fleet.statuses(key["value"])) == {200}
    fleet.meterings[:] = await asyncio.gather(
        *(asyncio.to_thread(fleet.restart, i, f"metering-keys-{i}-again") for i in range(2))
    )
    await wait_for(lambda: watches("connected"), 30, "every gateway to watch the keys again")
    later = await _issue(fleet, "after-restart", gateway=2)
    await fleet.until_everywhere(later["value"], 200)
    assert set(await fleet.statuses(key["value"])) == {200}


async def test_an_organisation_budget_shared_by_two_teams_is_never_overshot(fleet: Fleet, engine_address: str) -> None:
    """32 concurrent streams, half from each team's key, over three gateways: exactly as many run as the
    organisation's budget holds (each reserves and uses its prompt plus max_tokens), and what they used
    is billed to the token."""
    org = await _made(fleet, "/v1/organizations", name="shared-budget")
    keys = []
    for name in ("red", "blue"):
        team = await _made(fleet, "/v1/teams", org_id=org["id"], name=name)
        keys.append(await _issue(fleet, f"{name}-streams", team_id=team["id"]))
    for key in keys:
        await fleet.until_everywhere(key["value"], 200)
    max_tokens = 8
    status, usage = await _stream_status(fleet.gateways[0].address, ADMIN_API_KEY, max_tokens)
    assert status == 200 and usage is not None
    each = usage[0] + max_tokens
    fits = 11
    standing = await _limit(fleet, org["id"], token_budget=fits * each + each - 1)
    assert standing["level"] == "organization"
    await wait_idle(engine_address)
    results = await asyncio.gather(
        *(_stream_status(fleet.gateways[i % 3].address, keys[i % 2]["value"], max_tokens) for i in range(32))
    )
    ran = [u for status, u in results if status == 200]
    assert sorted({status for status, _ in results}) == [200, 429]
    assert len(ran) == fits and all(u == usage for u in ran), results
    after = (await fleet.call("GET", f"/v1/limits/{org['id']}")).json()
    assert after["usage"]["budget_used"] == fits * each
    refused = await fleet.call(
        "POST",
        "/v1/chat/completions",
        2,
        keys[1]["value"],
        json={"model": MODEL, "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": max_tokens},
    )
    assert refused.status_code == 429 and f"organization {org['id']}" in refused.json()["error"]["message"]

    async def billed() -> bool:
        async with metering_client(fleet.meterings[1].address) as client:
            rows = [await client.totals(mpb.GetTotalsRequest(api_key_id=k["id"])) for k in keys]
        return sum(r[0].totals.prompt_tokens + r[0].totals.completion_tokens for r in rows if r) == fits * each

    await wait_for(billed, 60, "the streams to be billed to their keys")


async def test_a_team_limit_and_a_key_limit_both_bind(fleet: Fleet) -> None:
    org = await _made(fleet, "/v1/organizations", name="two-levels", time_zone="Europe/Paris")
    team = await _made(fleet, "/v1/teams", org_id=org["id"], name="narrow", allowed_models=[MODEL])
    tight = await _issue(fleet, "tight-key", team_id=team["id"])
    loose = await _issue(fleet, "loose-key", team_id=team["id"])
    await _limit(fleet, team["id"], requests_per_minute=3)
    await _limit(fleet, tight["id"], requests_per_minute=1)
    await fleet.until_everywhere(loose["value"], 200)
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    async def chat(key: dict, gateway: int) -> httpx.Response:
        return await fleet.call("POST", "/v1/chat/completions", gateway, key["value"], json=ask)

    assert (await chat(tight, 0)).status_code == 200
    second = await chat(tight, 1)
    assert second.status_code == 429 and "This key's rate limit" in second.json()["error"]["message"]
    assert [(await chat(loose, i)).status_code for i in range(2)] == [200, 200]
    third = await chat(loose, 2)
    assert third.status_code == 429 and f"The team {team['id']}'s rate limit" in third.json()["error"]["message"]
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    standing = (await fleet.call("GET", "/v1/limits", 0, loose["value"])).json()
    assert [level["level"] for level in standing["levels"]] == ["team", "organization"]
    assert standing["levels"][0]["usage"]["requests_last_minute"] == 3
    # The team's models bind its keys too: once the team may use only another model, this one is as if
    # it did not exist, on every replica.
    changed = await fleet.call("POST", f"/v1/teams/{team['id']}", 0, json={"allowed_models": ["another-model"]})
    assert changed.status_code == 200, changed.text

    async def hidden() -> bool:
        replies = await asyncio.gather(*(chat(loose, i) for i in range(3)))
        return all(r.status_code == 404 and r.json()["error"]["code"] == "model_not_found" for r in replies)

    await wait_for(hidden, 10, "every replica to apply the team's models")


async def test_an_organisation_admin_is_refused_outside_its_organisation(fleet: Fleet) -> None:
    mine = await _made(fleet, "/v1/organizations", name="acme")
    theirs = await _made(fleet, "/v1/organizations", name="globex")
    their_team = await _made(fleet, "/v1/teams", org_id=theirs["id"], name="search")
    their_key = await _issue(fleet, "globex-key", team_id=their_team["id"])
    admin = await _issue(fleet, "acme-admin", org_id=mine["id"], role="org_admin")
    await fleet.until_everywhere(admin["value"], 200)
    secret = admin["value"]
    # Within its organisation it manages teams, keys and limits.
    my_team = await _made(fleet, "/v1/teams", secret, name="search")
    assert my_team["org_id"] == mine["id"]
    my_key = await _issue(fleet, "acme-key", key=secret, team_id=my_team["id"])
    limited = await fleet.call("PUT", f"/v1/limits/{my_team['id']}", 2, secret, json={"token_budget": 99})
    assert limited.status_code == 200, limited.text
    listed = (await fleet.call("GET", "/v1/keys", 1, secret)).json()["data"]
    assert {k["id"] for k in listed} == {admin["id"], my_key["id"]}
    assert [o["id"] for o in (await fleet.call("GET", "/v1/organizations", 0, secret)).json()["data"]] == [mine["id"]]
    # Outside it, nothing exists; what only the operator does is forbidden.
    for method, path, body, status in (
        ("GET", f"/v1/teams/{their_team['id']}", None, 404),
        ("GET", f"/v1/keys/{their_key['id']}", None, 404),
        ("DELETE", f"/v1/keys/{their_key['id']}", None, 404),
        ("POST", f"/v1/keys/{their_key['id']}/rotate", {}, 404),
        ("PUT", f"/v1/limits/{their_team['id']}", {"token_budget": 1}, 404),
        ("GET", f"/v1/limits/{theirs['id']}", None, 404),
        ("POST", "/v1/teams", {"name": "x", "org_id": theirs["id"]}, 404),
        ("POST", "/v1/keys", {"name": "x", "team_id": their_team["id"]}, 404),
        ("POST", "/v1/organizations", {"name": "mine-too"}, 403),
        ("POST", "/v1/models", {"model_name": MODEL}, 403),
    ):
        reply = await fleet.call(method, path, 0, secret, json=body)
        assert reply.status_code == status, (method, path, reply.text)
    assert (await fleet.call("GET", f"/v1/keys/{their_key['id']}")).json()["revoked_at"] is None
    # A member of the organisation is no admin of it.
    member = await fleet.call("GET", "/v1/teams", 0, my_key["value"])
    assert member.status_code == 403


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/organizations", {"name": "bad-zone", "time_zone": "Mars/Olympus"}, 400, "time_zone"),
        ("/v1/teams", {"name": "orphan", "org_id": "org_nope"}, 404, "org_id"),
        ("/v1/keys", {"name": "teamless", "team_id": "team_nope"}, 404, "team_id"),
        ("/v1/keys", {"name": "lonely-admin", "role": "org_admin"}, 400, "role"),
    ],
)
async def test_bad_account_changes_are_refused_naming_the_field(
    fleet: Fleet, path: str, body: dict, status: int, param: str
) -> None:
    reply = await fleet.call("POST", path, 1, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["param"] == param, reply.text
    limits = await fleet.call("PUT", "/v1/limits/team_nope", 0, json={"token_budget": 5})
    assert limits.status_code == 404 and limits.json()["error"]["param"] == "api_key_id"


async def test_an_organisation_money_budget_is_never_overshot(fleet: Fleet, engine_address: str) -> None:
    """32 concurrent streams of two teams' keys over three gateways against one organisation's budget in
    money: each reserves its prompt and completion cap at the price in force, and exactly as many run as
    the budget holds; the recorded cost never passes it."""
    price = {"model": MODEL, "prompt": "1", "cached_prompt": "1", "completion": "2"}
    reply = await fleet.call("POST", "/v1/prices", 0, json={"currency": "USD", "prices": [price]})
    assert reply.status_code == 200, reply.text
    org = await _made(fleet, "/v1/organizations", name="money-budget")
    keys = []
    for name in ("green", "gold"):
        team = await _made(fleet, "/v1/teams", org_id=org["id"], name=name)
        keys.append(await _issue(fleet, f"{name}-money", team_id=team["id"]))
    for key in keys:
        await fleet.until_everywhere(key["value"], 200)
    max_tokens = 8
    status, usage = await _stream_status(fleet.gateways[0].address, ADMIN_API_KEY, max_tokens)
    assert status == 200 and usage is not None
    each = usage[0] * 1 + max_tokens * 2  # micro-units: 1 per prompt token, 2 per completion token
    fits = 9
    budget = fits * each + each - 1
    standing = await _limit(fleet, org["id"], money_budget_micro=budget, budget_period="month")
    assert standing["limits"]["money_budget_micro"] == budget
    await wait_idle(engine_address)
    results = await asyncio.gather(
        *(_stream_status(fleet.gateways[i % 3].address, keys[i % 2]["value"], max_tokens) for i in range(32))
    )
    ran = [u for status, u in results if status == 200]
    assert sorted({status for status, _ in results}) == [200, 429]
    assert len(ran) == fits and all(u == usage for u in ran), results

    async def recorded() -> int:
        async with metering_client(fleet.meterings[0].address) as client:
            rows = [await client.totals(mpb.GetTotalsRequest(api_key_id=k["id"])) for k in keys]
        return sum(r[0].totals.cost_micro for r in rows if r)

    async def billed() -> bool:
        return await recorded() == fits * each

    await wait_for(billed, 60, "the streams' cost to be recorded")
    after = (await fleet.call("GET", f"/v1/limits/{org['id']}")).json()
    assert after["usage"]["money_used_micro"] == fits * each <= budget
