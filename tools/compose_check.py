"""`make compose-check`: `docker compose up` run end to end on this machine, proven through the published
gateway port with the `openai` SDK.

It starts what it needs where missing: Docker (Debian's docker.io and docker-compose, dockerd with
overlay2, else vfs), a base image (python:3.11-slim if it can be had; else a Debian bookworm made with
debootstrap and imported, with the host's CA bundle), a local torch wheel for the engine's build. It
builds the three images from the repo, runs credentials, engine, metering and gateway with host
networking on loopback ports (compose.hostnet.yaml), then checks:

1. a streamed chat ends with its usage chunk, and metering (`report`, run inside the metering
   container) holds the same usage;
2. `up --scale engine=2`: the gateway sees both engines, and a launched model's two replicas are
   placed one on each, both answering;
3. `restart gateway` under streaming load: afterwards metering equals the engines' own totals exactly
   (nothing lost, nothing twice);
4. `down` then `up`: metering's totals and the credentials are unchanged, and the keys still work.

It removes its containers, volumes and images afterwards (`--keep-images` keeps the images) and stops a
Docker daemon it started. It prints its run time.

    .venv/bin/python -m tools.compose_check [--keep-images] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from openai import AsyncOpenAI
from xinference_client import RESTfulClient

from services.contracts.builtin_models import EMBEDDED_MODEL_NAME, TINY_NAME
from tools.processes import ROOT, free_port

PROJECT = "llmserve-check"
LOCAL_BASE = "llmserve/debian-python:bookworm"
STACK = ["credentials", "engine", "metering", "gateway"]
USER_KEY, ADMIN_KEY = "sk-compose-check-user", "sk-compose-check-admin"
WORK = ROOT / "var" / "compose-check"


def log(message: str) -> None:
    print(f"[compose-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(command: list[str], timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def docker_ok() -> bool:
    return shutil.which("docker") is not None and run(["docker", "info"], check=False, timeout=30).returncode == 0


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"missing {', '.join(packages)}: install them (needs root and apt-get)")
    log(f"installing {' '.join(packages)} (Debian packages)")
    policy = Path("/usr/sbin/policy-rc.d")
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        run(["apt-get", "update", "-qq"], timeout=600)
        run(
            ["apt-get", "install", "-y", "-qq", *packages],
            timeout=1200,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    finally:
        policy.unlink()


def start_docker() -> subprocess.Popen | None:
    """None when a daemon already answers; else the dockerd this check started."""
    if docker_ok():
        return None
    missing = [
        p for p, tool in (("docker.io", "dockerd"), ("docker-compose", "docker-compose")) if not shutil.which(tool)
    ]
    if missing:
        apt_install(*missing)
    WORK.mkdir(parents=True, exist_ok=True)
    for driver in ("overlay2", "vfs"):
        daemon = subprocess.Popen(
            ["dockerd", f"--storage-driver={driver}"],
            stdout=(WORK / f"dockerd-{driver}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and daemon.poll() is None:
            if docker_ok():
                log(f"started dockerd (storage driver {driver})")
                return daemon
            time.sleep(1)
        daemon.terminate()
        daemon.wait(30)
    raise RuntimeError(f"dockerd did not start; see {WORK}/dockerd-*.log")


def compose_tool() -> list[str]:
    if run(["docker", "compose", "version"], check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    apt_install("docker-compose")
    return ["docker-compose"]


def base_image() -> str:
    """BASE_IMAGE if set; python:3.11-slim if present or pullable; else a local Debian bookworm."""
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    for image in ("python:3.11-slim", LOCAL_BASE):
        if run(["docker", "image", "inspect", image], check=False, timeout=30).returncode == 0:
            return image
    if run(["docker", "pull", "python:3.11-slim"], check=False, timeout=300).returncode == 0:
        return "python:3.11-slim"
    log(f"no registry answers: making {LOCAL_BASE} with debootstrap")
    if not shutil.which("debootstrap"):
        apt_install("debootstrap")
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,python3-dev,ca-certificates,libnuma1,g++",
                "bookworm",
                str(rootfs),
                debian_mirror(),
            ],
            timeout=1800,
        )
        # The host's CA bundle: where TLS is inspected on the way to PyPI, the host's trust is what works.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(
            ["docker", "import", "--change", "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt", "-", LOCAL_BASE],
            stdin=tar.stdout,
            timeout=600,
        )
        tar.wait()
    return LOCAL_BASE


def debian_mirror() -> str:
    for sources in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


def local_wheels() -> str:
    """build/wheels with torch's CPU wheel, fetched with the host's pip configuration (a local wheel
    folder here, PyTorch's index elsewhere)."""
    folder = ROOT / "build" / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob("torch-2.13.0+cpu-*.whl")):
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "torch==2.13.0+cpu", "-d", str(folder)]
        if run(pip, check=False, timeout=1200).returncode != 0:
            run([*pip, "--extra-index-url", "https://download.pytorch.org/whl/cpu"], timeout=1200)
    return str(folder.relative_to(ROOT))


class Stack:
    """The compose project, on loopback ports of its own."""

    def __init__(self, tool: list[str], base: str, wheels: str) -> None:
        self.engine_ports = [free_port(), free_port()]
        self.metering_port, self.gateway_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self._tool = [*tool, "-p", PROJECT]
        self.command = [*self._tool, "-f", "compose.yaml", "-f", "compose.hostnet.yaml"]
        self.env: dict[str, str] = {
            **os.environ,
            "BASE_IMAGE": base,
            "LOCAL_WHEELS": wheels,
            "PIP_EXTRA_INDEX_URL": "",
            "PIP_FIND_LINKS": "",
            "ENGINE_PORT": str(self.engine_ports[0]),
            "ENGINE_PORT_CHOICES": ",".join(map(str, self.engine_ports)),
            "ENGINE_ADDR": ",".join(f"127.0.0.1:{p}" for p in self.engine_ports),
            "METERING_PORT": str(self.metering_port),
            "METERING_METRICS_PORT": str(free_port()),
            "METERING_ADDR": f"127.0.0.1:{self.metering_port}",
            "GATEWAY_PORT": str(self.gateway_port),
            "GATEWAY_API_KEYS": f"check:{USER_KEY},check-admin:{ADMIN_KEY}",
            "GATEWAY_ADMIN_KEY_IDS": "check-admin",
            # No collector here (its image cannot be pulled): tracing stays off.
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
            # torch.compile's first-start build would add minutes to every check; production keeps it.
            "ENGINE_ENFORCE_EAGER": "true",
        }

    def resolve(self) -> None:
        """compose.yaml with the host-network override, resolved, without published ports: Docker refuses
        port bindings beside host networking (where the gateway's port is the host's anyway)."""
        resolved = yaml.safe_load(self.compose("config").stdout)
        for service in resolved["services"].values():
            if service.get("network_mode") == "host":
                service.pop("ports", None)
        WORK.mkdir(parents=True, exist_ok=True)
        path = WORK / "compose.resolved.yaml"
        path.write_text(yaml.safe_dump(resolved, sort_keys=False))
        self.command = [*self._tool, "-f", str(path), "--project-directory", str(ROOT)]

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.command, *args], timeout=timeout, check=check, cwd=ROOT, env=self.env)

    def exec(self, service: str, script: str, index: int = 1) -> str:
        return self.compose("exec", "-T", "--index", str(index), service, "python", "-c", script, timeout=120).stdout

    async def healthy(self, engines: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                try:
                    reply = await http.get(f"{self.url}/health")
                    if reply.status_code == 200 and reply.json()["engines"]["serving"] == engines:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the gateway did not report {engines} serving engine(s) in {timeout:.0f} s:\n"
                        + self.compose("logs", "--tail", "40", check=False).stdout
                    )
                await asyncio.sleep(2)

    def metering_totals(self) -> tuple[int, int, int]:
        """(requests, prompt, completion) from `report` inside the metering container."""
        out = self.compose(
            "exec",
            "-T",
            "metering",
            "python",
            "-m",
            "services.metering",
            "report",
            "--addr",
            f"127.0.0.1:{self.metering_port}",
            "--token-file",
            "/credentials/admin.token",
            timeout=120,
        ).stdout
        total = next(line for line in out.splitlines() if line.startswith("total")).split()
        return int(total[1]), int(total[5]), int(total[6])

    def engines_served(self, containers: int) -> tuple[int, int]:
        """(prompt, completion) the engines counted, summed over the containers."""
        loads = self.engine_loads(containers)
        return sum(p for p, _ in loads), sum(c for _, c in loads)

    def engine_loads(self, containers: int) -> list[tuple[int, int]]:
        """(prompt, completion) each engine container counted (GetLoad, run inside it)."""
        script = (
            "import asyncio\nfrom services.contracts.engine_client import EngineClient\n"
            "async def main():\n"
            "    port = open('/tmp/engine-port').read().strip()\n"
            "    token = open('/credentials/admin.token').read().strip()\n"
            "    async with EngineClient(f'127.0.0.1:{port}', token) as c:\n"
            "        load = await c.load()\n"
            "        print(load.prompt_tokens, load.completion_tokens)\n"
            "asyncio.run(main())\n"
        )
        loads = []
        for index in range(1, containers + 1):
            prompt, completion = map(int, self.exec("engine", script, index).split())
            loads.append((prompt, completion))
        return loads

    def credentials_digest(self) -> str:
        script = (
            "import hashlib, pathlib\n"
            "print(hashlib.sha256(pathlib.Path('/credentials/callers').read_bytes()).hexdigest())"
        )
        return self.exec("metering", script).strip()


async def stream_chat(client: AsyncOpenAI, model: str, max_tokens: int) -> tuple[int, int] | None:
    """A streamed chat; (prompt, completion) from its usage chunk, which must come last."""
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in stream:
        assert usage is None, "a chunk came after the usage chunk"
        if chunk.usage is not None:
            usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    return usage


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(2)


async def check(stack: Stack, figures: dict) -> None:
    client = AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=USER_KEY, max_retries=0, timeout=120)

    log("1. a streamed chat with its usage chunk, and the same usage in metering")
    usage = await stream_chat(client, EMBEDDED_MODEL_NAME, 8)
    assert usage is not None and usage[1] > 0, usage
    await wait_until(lambda: stack.metering_totals() == (1, *usage), 60, f"metering to hold {usage}")
    figures["first_chat_usage"] = usage

    log("2. --scale engine=2: both engines serve a launched model's replicas")
    started = time.monotonic()
    stack.compose("up", "-d", "--no-deps", "--no-recreate", "--scale", "engine=2", "engine", timeout=900)
    await stack.healthy(engines=2, timeout=900)
    figures["second_engine_ready_seconds"] = round(time.monotonic() - started)
    xinference = RESTfulClient(stack.url, api_key=ADMIN_KEY)
    uid = "tiny-check"
    await asyncio.to_thread(xinference.launch_model, TINY_NAME, model_uid=uid, replica=2)
    placed = set(xinference.describe_model(uid)["address"].split(","))
    assert placed == {f"127.0.0.1:{p}" for p in stack.engine_ports}, placed
    before = stack.engine_loads(2)
    replies = await asyncio.gather(*(stream_chat(client, uid, 2) for _ in range(8)))
    assert all(replies), replies
    after = stack.engine_loads(2)
    served = [b[1] - a[1] for a, b in zip(before, after)]
    assert all(served) and sum(served) == sum(c for _, c in replies), served
    figures["replica_completion_tokens_per_engine"] = served
    await asyncio.to_thread(xinference.terminate_model, uid)

    log("3. restart gateway under streaming load: nothing lost, nothing twice")
    seen: list[tuple[int, int]] = []
    failed = 0
    stop_at = time.monotonic() + 40

    async def load() -> None:
        nonlocal failed
        for _ in range(200):
            if time.monotonic() > stop_at:
                return
            try:
                usage = await stream_chat(client, EMBEDDED_MODEL_NAME, 16)
                if usage:
                    seen.append(usage)
            except Exception:
                failed += 1
                await asyncio.sleep(0.5)

    async def restart() -> None:
        await asyncio.sleep(5)
        await asyncio.to_thread(stack.compose, "restart", "gateway")

    await asyncio.gather(*(load() for _ in range(4)), restart())
    assert seen, "no stream completed around the restart"

    def agreed() -> bool:
        requests, prompt, completion = stack.metering_totals()
        return (prompt, completion) == stack.engines_served(2)

    await wait_until(agreed, 120, "metering to equal the engines' totals")
    requests, prompt, completion = stack.metering_totals()
    assert completion >= sum(c for _, c in seen) + usage[1]
    figures["restart"] = {
        "streams_completed": len(seen),
        "streams_cut": failed,
        "metering_requests": requests,
        "metering_tokens": [prompt, completion],
        "engines_tokens": list(stack.engines_served(2)),
    }

    log("4. down, then up: metering's totals and the credentials are kept")
    before, digest = stack.metering_totals(), stack.credentials_digest()
    stack.compose("down", timeout=300)
    # A container still stopping when `down` removes it can be left behind (seen once with docker-compose v1
    # on a loaded machine: the engine's, which `up` then did not start): remove what is left.
    leftover = stack.compose("ps", "-a", "-q", check=False, timeout=60).stdout.split()
    if leftover:
        log(f"`down` left {len(leftover)} container(s): removing them")
        run(["docker", "rm", "-f", *leftover], check=False, timeout=120)
    stack.compose("up", "-d", *STACK, timeout=1200)
    await stack.healthy(engines=1, timeout=900)
    assert stack.metering_totals() == before
    assert stack.credentials_digest() == digest
    assert await stream_chat(client, EMBEDDED_MODEL_NAME, 4)
    figures["after_down_up"] = {"metering": list(before), "credentials_sha256": digest[:16]}


def image_sizes(stack: Stack) -> dict[str, str]:
    sizes = {}
    for service in ("engine", "metering", "gateway"):
        image = f"{PROJECT}_{service}"
        out = run(["docker", "image", "inspect", "-f", "{{.Size}}", image], check=False, timeout=30).stdout.strip()
        if not out:
            image = f"{PROJECT}-{service}"
            out = run(["docker", "image", "inspect", "-f", "{{.Size}}", image], check=False, timeout=30).stdout.strip()
        sizes[service] = f"{int(out) / 1e6:.0f} MB" if out else "unknown"
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep-images", action="store_true", help="keep the built images (the next run builds faster)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "compose-check.json")
    args = parser.parse_args()
    started = time.monotonic()
    figures: dict = {"date": time.strftime("%Y-%m-%d")}
    daemon = start_docker()
    stack = None
    try:
        tool = compose_tool()
        base = base_image()
        stack = Stack(tool, base, local_wheels())
        stack.resolve()
        figures.update(
            compose=" ".join(tool),
            base_image=base,
            docker=run(["docker", "version", "-f", "{{.Server.Version}}"], timeout=30).stdout.strip(),
        )
        log(f"building the images ({' '.join(tool)}, base {base})")
        t = time.monotonic()
        stack.compose("build", *STACK, timeout=3600)
        figures["build_seconds"] = round(time.monotonic() - t)
        figures["image_sizes"] = image_sizes(stack)
        log(f"built in {figures['build_seconds']} s: {figures['image_sizes']}")
        t = time.monotonic()
        stack.compose("up", "-d", *STACK, timeout=1200)
        asyncio.run(stack.healthy(engines=1, timeout=900))
        figures["up_seconds"] = round(time.monotonic() - t)
        log(f"up and serving in {figures['up_seconds']} s")
        asyncio.run(check(stack, figures))
        figures["result"] = "passed"
    except BaseException as error:
        figures["result"] = f"failed: {type(error).__name__}: {str(error)[:2000]}"
        if stack is not None:
            (WORK / "last-logs.txt").parent.mkdir(parents=True, exist_ok=True)
            (WORK / "last-logs.txt").write_text(stack.compose("logs", "--no-color", check=False, timeout=120).stdout)
        raise
    finally:
        if stack is not None:
            stack.compose(
                "down",
                "-v",
                "--remove-orphans",
                *([] if args.keep_images else ["--rmi", "local"]),
                check=False,
                timeout=600,
            )
        if daemon is not None:
            daemon.terminate()
            daemon.wait(60)
        figures["run_seconds"] = round(time.monotonic() - started)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
        log(f"{figures['result']} in {figures['run_seconds']} s; figures in {args.out}")


if __name__ == "__main__":
    main()
