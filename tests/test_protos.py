"""The committed stubs in gen/ are exactly what protos/ generates."""

import subprocess
import sys

from tools.processes import ROOT


def test_generated_stubs_match_protos() -> None:
    result = subprocess.run(
        [sys.executable, "tools/gen_protos.py", "--check", "gen"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_notices_a_stale_stub(tmp_path) -> None:
    subprocess.run([sys.executable, "tools/gen_protos.py", "--out", str(tmp_path)], cwd=ROOT, check=True)
    stub = tmp_path / "llmserve" / "engine" / "v1" / "engine_pb2.pyi"
    stub.write_text(stub.read_text() + "\n# edited by hand\n")
    result = subprocess.run(
        [sys.executable, "tools/gen_protos.py", "--check", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "engine_pb2.pyi" in result.stdout
