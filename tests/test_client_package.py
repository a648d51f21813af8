"""The internal callers' client, as another repository would use it: `make client` builds the wheel, a
fresh virtual environment installs it with its pinned dependencies only (no repository on its path), and
the README's example streams tokens from the real engine and reads the usage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.credentials import TESTER_TOKEN
from tools.processes import ROOT


def test_the_client_wheel_installs_alone_and_streams_with_usage(tmp_path: Path, engine_address: str) -> None:
    subprocess.run(["make", "-s", "client", f"PY={sys.executable}"], cwd=ROOT, check=True, timeout=300)
    [wheel] = (ROOT / "dist").glob("llmserve_client-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=600)
    example = (ROOT / "clients" / "python" / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    token_file = tmp_path / "batch-job.token"
    token_file.write_text(TESTER_TOKEN)
    from services.contracts.builtin_models import EMBEDDED_MODEL_NAME

    example = example.replace("127.0.0.1:50051", engine_address).replace("batch-job.token", str(token_file))
    assert EMBEDDED_MODEL_NAME in example
    # Run from an empty folder, with nothing of the repository importable: only the wheel.
    done = subprocess.run([python, "-I", "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    usage = re.search(r"prompt (\d+), completion (\d+), cached (\d+)", done.stdout)
    assert usage and int(usage[1]) > 0 and 0 < int(usage[2]) <= 32, done.stdout
