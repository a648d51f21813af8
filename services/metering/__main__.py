"""`python -m services.metering` serves (settings from METERING_* variables);
`python -m services.metering report [--from 1h] ...` prints usage totals from the live service."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.metering.config import MeteringSettings
from services.metering.report import main as report_main
from services.metering.server import serve


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        report_main(sys.argv[2:])
        return
    settings = MeteringSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
