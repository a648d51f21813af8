"""The fleet as it is deployed, under faults: two gateways and two metering replicas on one PostgreSQL
in front of the session's engine, a streaming load with hang-ups, and at random moments SIGKILL of a
gateway (replaced by a new one on a new data folder, so a new identity), of a metering replica
(restarted), and of PostgreSQL itself (restarted). Asserted exactly: the engine's totals == metering's
totals, the same from either replica, and what every client saw to its usage chunk is in them."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time
from pathlib import Path

from tests.calls import CANCELLER, FINISHER, KEYS, stream_chat
from tests.credentials import engine_client
from tests.stack import (
    engine_baseline,
    engine_served,
    metering_reaches_engine,
    metering_totals,
    start_gateway,
    start_metering,
    totals_by_key,
)
from tools.postgres import PostgresServer
from tools.processes import ServiceProcess, free_port

# Each fault twice, in an order the seed shuffles; the load runs until they are done and 20 streams were
# seen to their usage chunk (the cap only bounds a run that cannot get there).
FAULTS = ("gateway", "metering", "postgres") * 2
MIN_STREAMS = 20
CAP_SECONDS = 300.0


async def test_gateways_metering_replicas_and_postgres_killed_at_random_lose_and_double_nothing(
    log_dir: Path, tmp_path: Path, engine_address: str, postgres_server: PostgresServer
) -> None:
    rng = random.Random(19)
    env = {"METERING_DATABASE_URL": postgres_server.create_database("fleet")}
    ports = [free_port(), free_port()]
    names = itertools.count(1)

    def metering_replica(i: int) -> ServiceProcess:
        return start_metering(log_dir, tmp_path / f"m{i}", ports[i], f"metering-fleet-{i}-{next(names)}", env)

    def gateway_replica() -> ServiceProcess:
        n = next(names)
        return start_gateway(
            log_dir,
            engine_address,
            f"gateway-fleet-{n}",
            data_dir=str(tmp_path / f"g{n}"),
            api_keys=KEYS,
            metering_addr="ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports),
        )

    meterings = list(await asyncio.gather(*(asyncio.to_thread(metering_replica, i) for i in (0, 1))))
    gateways = list(await asyncio.gather(*(asyncio.to_thread(gateway_replica) for _ in (0, 1))))
    kills = {"gateway": 0, "metering": 0, "postgres": 0}
    seen: list[tuple[int, int]] = []
    try:
        before = await engine_baseline(engine_address, meterings[0].address)
        cap = time.monotonic() + CAP_SECONDS
        faults_done = asyncio.Event()

        def load_over() -> bool:
            return (faults_done.is_set() and len(seen) >= MIN_STREAMS) or time.monotonic() > cap

        async def client(n: int) -> None:
            while not load_over():
                url = rng.choice(gateways).address
                if n % 3 == 0:
                    await stream_chat(url, CANCELLER, 48, rng.uniform(0.01, 1.0))
                else:
                    usage = await stream_chat(url, FINISHER, rng.choice([4, 8, 16]))
                    if usage is not None:
                        seen.append(usage)

        async def faults() -> None:
            plan = list(FAULTS)
            rng.shuffle(plan)
            for what in plan:
                await asyncio.sleep(rng.uniform(2.0, 5.0))
                if time.monotonic() > cap:
                    break
                kills[what] += 1
                if what == "gateway":
                    i = rng.randrange(2)
                    gateways[i].signal(signal.SIGKILL)
                    gateways[i].stop()
                    gateways[i] = await asyncio.to_thread(gateway_replica)
                elif what == "metering":
                    i = rng.randrange(2)
                    meterings[i].signal(signal.SIGKILL)
                    meterings[i].stop()
                    meterings[i] = await asyncio.to_thread(metering_replica, i)
                else:
                    postgres_server.kill()
                    await asyncio.sleep(rng.uniform(0.2, 1.5))
                    await asyncio.to_thread(postgres_server.start)
            faults_done.set()

        await asyncio.gather(*(client(n) for n in range(8)), faults())
        assert sum(kills.values()) == len(FAULTS) and len(seen) >= MIN_STREAMS, (kills, len(seen))
        await metering_reaches_engine(meterings[0].address, engine_address, before, 120)
        after = await engine_served(engine_address)
        one, two = await metering_totals(meterings[0].address), await metering_totals(meterings[1].address)
        assert one == two
        print(
            f"\nkills {kills}; {len(seen)} streams seen to their usage chunk; engine = metering = {one.prompt_tokens}/"
            f"{one.completion_tokens} prompt/completion tokens over {one.requests} requests"
            f" ({one.aborted_requests} aborted)"
        )
        assert (one.prompt_tokens, one.completion_tokens) == (after[0] - before[0], after[1] - before[1])
        by_key = await totals_by_key(meterings[1].address)
        assert by_key["finisher"].completion_tokens >= sum(c for _, c in seen)
        assert by_key["finisher"].ok_requests >= len(seen)
        async with engine_client(engine_address) as engine:
            assert (await engine.load()).open_streams == 0
    finally:
        for process in [*gateways, *meterings]:
            process.stop()
        if not postgres_server.running:
            postgres_server.start()
