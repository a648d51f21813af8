"""`python -m services.metering` serves (settings from METERING_* variables);
`python -m services.metering report [--from 1h] ...` prints usage totals from the live service;
`python -m services.metering reconcile` recounts the store's sums from its events;
`python -m services.metering keys ...` issues, lists, rotates and revokes API keys;
`python -m services.metering orgs ...` / `teams ...` manage the organisations and teams keys belong to;
`python -m services.metering prices import FILE | list`: the price book;
`python -m services.metering rerate --prices FILE --from --to [--apply]`: a period priced again;
`python -m services.metering export --from --to --out FILE.parquet|.csv`: a period's usage, FOCUS columns."""

from __future__ import annotations

import asyncio
import sys

from services.metering.config import MeteringSettings
from services.metering.export_command import main as export_main
from services.metering.keys_command import accounts_main
from services.metering.keys_command import main as keys_main
from services.metering.prices_command import main as prices_main
from services.metering.reconcile_command import main as reconcile_main
from services.metering.report import main as report_main
from services.metering.rerate_command import main as rerate_main
from services.metering.server import serve
from services.tracing import grpc_server_instrumentation, setup_logging, setup_tracing, shutdown_tracing


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        report_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["keys"]:
        keys_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["rerate"]:
        rerate_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["prices"]:
        prices_main(sys.argv[2:])
        return
    if sys.argv[1:2] in (["orgs"], ["teams"]):
        accounts_main(sys.argv[1], sys.argv[2:])
        return
    if sys.argv[1:2] == ["export"]:
        export_main(sys.argv[2:])
        return
    if sys.argv[1:2] == ["reconcile"]:
        reconcile_main(sys.argv[2:])
        return
    settings = MeteringSettings()
    setup_logging(settings.log_level)
    setup_tracing("metering")
    grpc_server_instrumentation()
    asyncio.run(serve(settings))
    shutdown_tracing()


if __name__ == "__main__":
    main()
