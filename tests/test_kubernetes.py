"""deploy/kubernetes/: every manifest and every overlay build is valid against the stated
Kubernetes, KEDA, Prometheus Operator and KServe schemas (offline), a misspelt field fails
that check, and the manifests keep the promises the service's lifecycle depends on."""

from __future__ import annotations

import os
import shutil
from unittest import mock

import pytest
import yaml

from app.observability.metrics import Metrics
from app.settings import Settings
from bench.scaleout import autoscaling_query
from scripts import k8s_validate as kv


@pytest.fixture(scope="module")
def kustomize() -> str:
    """Fails (never skips) without it: scripts/system-deps.sh installs it into .tools/."""
    return kv.kustomize()


def rendered(overlay: str) -> dict[str, dict]:
    return {d["kind"]: d for d in kv.build(kv.MANIFESTS / "overlays" / overlay,
                                            kv.components())}


def container(deployment: dict) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                if c["name"] == "ortserve")


def settings_of(c: dict) -> Settings:
    """The Settings the container's environment gives the service, parsed as it parses."""
    with mock.patch.dict(os.environ, {e["name"]: e["value"] for e in c.get("env", [])},
                         clear=True):
        return Settings()


def test_every_manifest_and_overlay_build_is_valid(kustomize):
    assert kv.validate_all() == []
    assert {p.name for p in kv.overlays()} == {"cpu", "gpu"}


MUTATIONS = [  # (file, path to a mapping, key to misspell)
    ("base/deployment.yaml", ("spec", "template", "spec"), "terminationGracePeriodSeconds"),
    ("base/service.yaml", ("spec",), "ports"),
    ("base/poddisruptionbudget.yaml", ("spec",), "maxUnavailable"),
    ("components/hpa/horizontalpodautoscaler.yaml", ("spec",), "minReplicas"),
    ("components/keda/scaledobject.yaml", ("spec",), "pollingInterval"),
    ("components/prometheus-operator/podmonitor.yaml", ("spec",), "podMetricsEndpoints"),
    ("kserve/servingruntime.yaml", ("spec",), "supportedModelFormats"),
    ("kserve/inferenceservice-keda.yaml", ("spec", "predictor", "autoScaling", "metrics", 0,
                                           "external", "metric"), "serverAddress"),
]


@pytest.mark.parametrize("file,path,key", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_misspelt_field_fails_validation(kustomize, tmp_path, file, path, key):
    root = tmp_path / "kubernetes"
    shutil.copytree(kv.MANIFESTS, root)
    doc = yaml.safe_load((root / file).read_text())
    node = doc
    for step in path:
        node = node[step]
    node[key[:-1] + key[-1].upper()] = node.pop(key)  # e.g. pollingIntervaL
    (root / file).write_text(yaml.safe_dump(doc))
    errors = kv.validate_all(root)
    assert errors and all(key[:-1] in e for e in errors), errors


def test_a_misspelt_field_in_a_patch_fails_through_the_build(kustomize, tmp_path):
    root = tmp_path / "kubernetes"
    shutil.copytree(kv.MANIFESTS, root)
    patch = root / "overlays/gpu/gpu.yaml"
    patch.write_text(patch.read_text().replace("tolerations:", "toleration:"))
    errors = kv.validate_all(root)
    assert errors and all("overlays/gpu" in e and "toleration" in e for e in errors), errors


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_lifecycle_probes_and_hardening(kustomize, overlay):
    objs = rendered(overlay)
    dep = objs["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    settings = settings_of(c)
    # Kubernetes never SIGKILLs a draining pod, and takes it out of the endpoints in time
    assert pod["terminationGracePeriodSeconds"] > settings.drain_delay_s + settings.shutdown_grace_s
    ready = c["readinessProbe"]
    assert ready["httpGet"]["path"] == "/health/ready"
    assert ready["periodSeconds"] * ready["failureThreshold"] < settings.drain_delay_s / 2
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert c["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # non-root, read-only root filesystem, resources stated
    assert pod["securityContext"]["runAsNonRoot"] is True
    for ctr in pod["containers"] + pod.get("initContainers", []):
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
        assert ctr["resources"]["requests"] and ctr["resources"]["limits"]["memory"]
    # the Service, PodDisruptionBudget and autoscalers select or target these pods
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert objs["Service"]["spec"]["selector"] == labels
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    for kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        assert objs[kind]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert {p["name"] for p in c["ports"]} == {"http", "grpc"}
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_gpu_overlay_asks_for_a_gpu_and_the_float_graph(kustomize):
    c = container(rendered("gpu")["Deployment"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    settings = settings_of(c)
    assert settings.device == "cuda" and settings.strict_device
    assert settings.model_variant == {"sentiment": "fp32"}
    assert c["image"].endswith(":gpu")


def test_every_setting_named_in_the_manifests_exists():
    """A misspelt ORTSERVE_ variable would be ignored silently by the service."""
    fields = {f"ORTSERVE_{name.upper()}" for name in Settings.model_fields}
    named = set()
    for path in kv.MANIFESTS.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            text = yaml.safe_dump(doc)
            named |= {w.strip("'\":,") for w in text.split() if w.startswith("ORTSERVE_")}
    assert named and named <= fields, named - fields


def test_kserve_runtime_is_what_kserve_expects():
    rt = yaml.safe_load((kv.MANIFESTS / "kserve/servingruntime.yaml").read_text())
    c = rt["spec"]["containers"][0]
    assert c["name"] == "kserve-container"
    assert {"name": "onnx", "version": "1", "autoSelect": True, "priority": 2} in \
        rt["spec"]["supportedModelFormats"]
    assert set(rt["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    assert "/mnt/models" in c["args"] and c["args"][c["args"].index("--port") + 1] == "8080"
    assert rt["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    for name in ("inferenceservice.yaml", "inferenceservice-keda.yaml"):
        isvc = yaml.safe_load((kv.MANIFESTS / "kserve" / name).read_text())
        model = isvc["spec"]["predictor"]["model"]
        assert (model["runtime"], model["modelFormat"]["name"], model["protocolVersion"]) \
            == (rt["metadata"]["name"], "onnx", "v2")


def test_every_autoscaler_uses_the_signal_the_service_exports():
    query, threshold = autoscaling_query()
    isvc = yaml.safe_load((kv.MANIFESTS / "kserve/inferenceservice-keda.yaml").read_text())
    ext = isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]
    assert ext["metric"]["query"] == query
    assert float(ext["target"]["averageValue"]) == threshold
    hpa = yaml.safe_load((kv.MANIFESTS / "components/hpa/horizontalpodautoscaler.yaml")
                         .read_text())
    assert float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"]) == threshold
    adapter = yaml.safe_load((kv.MANIFESTS / "components/hpa/prometheus-adapter-values.yaml")
                             .read_text())["rules"]["custom"][0]
    assert adapter["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    signal = "ortserve_input_seconds_total"
    assert signal in query and adapter["seriesQuery"].startswith(signal + "{")
    assert f"# TYPE {signal} counter" in Metrics().render().decode()
