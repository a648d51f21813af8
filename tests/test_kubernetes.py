"""The Kubernetes manifests: every overlay renders with `kubectl kustomize`, every object validates
offline against the Kubernetes API schemas (kubernetes-validate, strict: no unknown fields), and the
wiring holds: each Service selects pods some workload makes, each env var or volume that names a Secret
or ConfigMap key finds it, each probe points at a port its container opens, and each pod's grace period
is longer than its service's drain."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tools.processes import ROOT

KUSTOMIZATIONS = [
    ROOT / "deploy" / "kubernetes" / "base",
    ROOT / "deploy" / "kubernetes" / "overlays" / "gpu",
    ROOT / "deploy" / "kubernetes" / "overlays" / "postgres",
]
KUBERNETES_VERSION = "1.32.0"
WORKLOADS = ("Deployment", "StatefulSet")


def rendered(path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is needed to render the manifests (it is on these machines)")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True, timeout=60)
    return [o for o in yaml.safe_load_all(out.stdout) if o]


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_every_object_validates_against_the_api_schemas(path) -> None:
    objects = rendered(path)
    assert {o["kind"] for o in objects} >= {
        "Service",
        "StatefulSet",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "ConfigMap",
    }
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_the_wiring_holds(path) -> None:
    objects = rendered(path)
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    workloads = [o for kind in WORKLOADS for o in by_kind.get(kind, {}).values()]
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for service in by_kind["Service"].values():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), service["metadata"]["name"]
    keys = {
        ("Secret", name): set(o.get("stringData", {})) | set(o.get("data", {})) for name, o in by_kind["Secret"].items()
    } | {("ConfigMap", name): set(o.get("data", {})) for name, o in by_kind["ConfigMap"].items()}
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in keys
        for container in pod["containers"]:
            ports = {p["containerPort"] for p in container["ports"]} | {p["name"] for p in container["ports"]}
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if ref in source:
                        assert source[ref]["key"] in keys[(kind, source[ref]["name"])], env["name"]
                if env["name"].endswith("_FILE") and env.get("value", "").startswith("/credentials/"):
                    assert env["value"].removeprefix("/credentials/") in keys[("Secret", "llmserve-credentials")]
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                if probe is None:
                    continue
                action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
                assert action["port"] in ports, (workload["metadata"]["name"], probe_name)
        # Longer than the drain (grace + settle + outbox delivery) the services do on SIGTERM.
        assert pod["terminationGracePeriodSeconds"] >= 20
    for service in by_kind["Service"].values():
        targets = {p["targetPort"] for p in service["spec"]["ports"]}
        matching = [
            w
            for w in workloads
            if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        opened = {p["name"] for w in matching for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert targets <= opened, service["metadata"]["name"]
    assert by_kind["Service"]["engine"]["spec"]["clusterIP"] == "None", "headless: the gateway resolves every engine"
    assert by_kind["Deployment"]["gateway"]["spec"]["replicas"] >= 2


def test_the_gpu_overlay_asks_for_gpus_and_tensor_parallelism() -> None:
    [engine] = [o for o in rendered(KUSTOMIZATIONS[1]) if o["kind"] == "StatefulSet"]
    container = engine["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "ENGINE_TENSOR_PARALLEL_SIZE", "value": "2"} in container["env"]


def test_the_postgres_overlay_runs_metering_replicas_on_one_database() -> None:
    objects = rendered(KUSTOMIZATIONS[2])
    [metering] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "metering"]
    assert metering["spec"]["replicas"] >= 2 and metering["spec"]["strategy"]["type"] == "RollingUpdate"
    container = metering["spec"]["template"]["spec"]["containers"][0]
    url = next(e for e in container["env"] if e["name"] == "METERING_DATABASE_URL")
    assert url["valueFrom"]["secretKeyRef"]["name"] == "metering-database"
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim" and o["metadata"]["name"] == "metering-data"]
    [addresses] = [o for o in objects if o["kind"] == "ConfigMap"]
    assert addresses["data"]["GATEWAY_METERING_ADDR"] == "dns:///metering-headless:50052"
    [headless] = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "metering-headless"]
    assert headless["spec"]["clusterIP"] == "None"
