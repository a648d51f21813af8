"""Generates Python stubs (with .pyi) from protos/, or checks that the committed ones match."""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto, plus package __init__ files."""
    out.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for proto in files:
        package = (out / proto).parent
        while package != out:
            (package / "__init__.py").touch()
            package = package.parent


def differences(left: Path, right: Path) -> list[str]:
    """Paths (relative) of generated files that differ or exist on one side only."""

    def listing(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix in {".py", ".pyi"}}

    a, b = listing(left), listing(right)
    changed = {p for p in a & b if not filecmp.cmp(left / p, right / p, shallow=False)}
    return sorted((a ^ b) | changed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "gen")
    parser.add_argument("--check", type=Path, help="compare this folder with fresh stubs")
    args = parser.parse_args()
    if args.check is None:
        generate(args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        diff = differences(Path(tmp), args.check)
    if diff:
        print("generated stubs differ from protos/ (run `make protos`):", *diff, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
