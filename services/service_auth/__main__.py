"""`python -m services.service_auth init [--dir var/credentials]`: makes the internal credentials once."""

from __future__ import annotations

import argparse
from pathlib import Path

from services.service_auth.provision import ensure_credentials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["init"])
    parser.add_argument("--dir", type=Path, default=Path("var/credentials"))
    args = parser.parse_args()
    callers = ensure_credentials(args.dir)
    print(f"credentials in {args.dir}: {callers.name} (for the engine and metering), gateway.token, admin.token")


if __name__ == "__main__":
    main()
