"""deploy/kubernetes/: every manifest and every overlay build is valid against the stated
Kubernetes, KEDA, Prometheus Operator and KServe schemas (offline), a misspelt field fails
that check, and the manifests keep the promises the service's lifecycle depends on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

import pytest
import yaml

from app.observability.metrics import Metrics
from app.security import posture
from app.settings import Settings, SettingsError, load_settings
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
    """The Settings the container's environment gives the service, parsed as it parses
    (values from a Secret left out: the Secret is not here), and its --host argument."""
    env = settings_env(c)
    args = c.get("args", [])
    if "--host" in args:
        env["ORTSERVE_HOST"] = args[args.index("--host") + 1]
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


def settings_env(c: dict) -> dict[str, str]:
    """A container's environment variables with literal values."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


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
    # resources stated (hardening and keys: test_every_workload_is_closed_by_default)
    for ctr in pod["containers"] + pod.get("initContainers", []):
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


# -- closed by default: hardening and keys on every workload ----------------------------------

SECRET = "ortserve-keys"
KSERVE_MODEL_ONLY = {"modelFormat", "runtime", "protocolVersion", "storageUri"}


def merged(base, over):
    """`over` merged into `base` as a strategic merge patch does for container fields:
    mappings key by key, lists of named items (env, volumeMounts) by name, the rest
    replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merged(base[k], v) if k in base else v for k, v in over.items()}}
    named = isinstance(base, list) and isinstance(over, list) and all(
        isinstance(x, dict) and "name" in x for x in base + over)
    if named:
        by_name = {x["name"]: x for x in base}
        for x in over:
            by_name[x["name"]] = merged(by_name[x["name"]], x) if x["name"] in by_name else x
        return list(by_name.values())
    return over


def kserve_pod(runtime: dict, isvc: dict) -> dict:
    """The predictor pod KServe makes of a ServingRuntime and an InferenceService: the
    model's container fields merged over the runtime's container, volumes from both."""
    predictor = isvc["spec"]["predictor"]
    model = {k: v for k, v in predictor["model"].items() if k not in KSERVE_MODEL_ONLY}
    pod = {"containers": [merged(runtime["spec"]["containers"][0], model)],
           "volumes": runtime["spec"].get("volumes", []) + predictor.get("volumes", [])}
    if "securityContext" in predictor:
        pod["securityContext"] = predictor["securityContext"]
    return pod


def workloads(root: Path = kv.MANIFESTS) -> list[tuple[str, dict, str]]:
    """(where, pod spec, name of the ortserve container) of every pod the manifests make:
    each overlay's Deployment alone and with every component, the ServingRuntime's
    container, and the pod each InferenceService makes with it."""
    out = []
    for overlay in kv.overlays(root):
        for comps in ([], kv.components(root)):
            for d in kv.build(overlay, comps):
                if d["kind"] == "Deployment":
                    where = f"overlays/{overlay.name}" + (" + components" if comps else "")
                    out.append((where, d["spec"]["template"]["spec"], "ortserve"))
    runtime = yaml.safe_load((root / "kserve/servingruntime.yaml").read_text())
    out.append(("kserve/servingruntime.yaml", {"containers": runtime["spec"]["containers"],
                                               "volumes": runtime["spec"].get("volumes", [])},
                "kserve-container"))
    for path in sorted((root / "kserve").glob("inferenceservice*.yaml")):
        out.append((f"kserve/{path.name}",
                    kserve_pod(runtime, yaml.safe_load(path.read_text())), "kserve-container"))
    return out


def hardening_problems(where: str, pod: dict) -> list[str]:
    """What each container of a pod lacks of: read-only root filesystem, no privilege
    escalation, not root, a seccomp profile, no capabilities (pod-level defaults count
    where Kubernetes applies them)."""
    problems = []
    pod_sc = pod.get("securityContext") or {}
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext") or {}
        name = f"{where}: container {c['name']}"
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True or \
                sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsNonRoot is not true")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile")) or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []) or caps.get("add"):
            problems.append(f"{name}: capabilities are not all dropped")
    return problems


def mount_of(pod: dict, c: dict, path: Path) -> tuple[dict, dict] | None:
    """(volumeMount, volume) of the volume a container sees `path` in, if any."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        if path == Path(m["mountPath"]) or Path(m["mountPath"]) in path.parents:
            return m, volumes.get(m["name"], {})
    return None


def key_problems(where: str, pod: dict, name: str) -> list[str]:
    """What lets the ortserve container answer without a key, or puts a key in the
    manifest: keys must come from the Secret (a mounted key file, which the service
    re-reads, and optional secretKeyRefs), /metrics needs one, and the service's own
    start-up check passes without an opt-in."""
    c = next(c for c in pod["containers"] if c["name"] == name)
    problems = []
    for e in c.get("env", []):
        if e["name"] in ("ORTSERVE_API_KEYS", "ORTSERVE_ADMIN_KEYS") and "valueFrom" not in e:
            problems.append(f"{where}: {e['name']} is a literal key in the manifest")
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if e["name"].startswith("ORTSERVE_") and "valueFrom" in e and \
                (ref or {}).get("name") != SECRET:
            problems.append(f"{where}: {e['name']} does not come from the Secret {SECRET}")
    settings = settings_of(c)
    if settings.allow_unauthenticated:
        problems.append(f"{where}: ORTSERVE_ALLOW_UNAUTHENTICATED opens it")
    try:
        posture.check(settings)
    except posture.UnsafeSettings as exc:
        problems.append(f"{where}: {exc}")
    if settings.api_keys_file is None:
        problems.append(f"{where}: no API keys file (ORTSERVE_API_KEYS_FILE)")
    else:
        found = mount_of(pod, c, settings.api_keys_file)
        secret = (found or ({}, {}))[1].get("secret") or {}
        items = [i["path"] for i in secret.get("items", [])]
        if secret.get("secretName") != SECRET or secret.get("optional"):
            problems.append(f"{where}: the API keys file is not on a volume of the Secret "
                            f"{SECRET}")
        elif found[0].get("subPath") or found[0].get("subPathExpr"):
            problems.append(f"{where}: the keys volume is mounted with subPath (never "
                            "updated: no rotation)")
        elif items and settings.api_keys_file.name not in items:
            problems.append(f"{where}: the Secret's volume has no {settings.api_keys_file}")
    if not settings.metrics_require_key:
        problems.append(f"{where}: /metrics answers without a key")
    tmp = Path(settings_env(c).get("TMPDIR", "/tmp"))
    found = mount_of(pod, c, tmp)
    if found is None or "emptyDir" not in found[1]:
        problems.append(f"{where}: TMPDIR {tmp} is not on an emptyDir (read-only root)")
    return problems


def closed_problems(root: Path = kv.MANIFESTS) -> list[str]:
    problems = []
    for where, pod, name in workloads(root):
        problems += hardening_problems(where, pod) + key_problems(where, pod, name)
    return problems


def test_every_workload_is_closed_by_default(kustomize):
    """Base and overlays (with and without components), the KServe runtime and each
    InferenceService: hardened containers, keys from the Secret, /metrics behind a key."""
    found = workloads()
    assert {w for w, _, _ in found} >= {
        "overlays/cpu", "overlays/gpu + components", "kserve/servingruntime.yaml",
        "kserve/inferenceservice.yaml", "kserve/inferenceservice-keda.yaml"}
    assert closed_problems() == []


def _set(path: tuple, value):
    """A mutation: set the value at `path` (None: remove it); a step `name=X` is the item
    of a list whose name is X."""
    def key(node, step):
        if isinstance(step, str) and step.startswith("name="):
            return next(i for i, x in enumerate(node) if x["name"] == step[5:])
        return step

    def mutate(doc):
        node = doc
        for step in path[:-1]:
            node = node[key(node, step)]
        if value is None:
            node.pop(key(node, path[-1]))
        else:
            node[key(node, path[-1])] = value
    return mutate


_POD = ("spec", "template", "spec")
_MAIN = (*_POD, "containers", "name=ortserve")
_RUNTIME = ("spec", "containers", "name=kserve-container")
CLOSED_MUTATIONS = [  # (file, mutation, what every problem then names)
    ("base/deployment.yaml", _set((*_MAIN, "securityContext", "readOnlyRootFilesystem"),
                                  False), "readOnlyRootFilesystem"),
    ("base/deployment.yaml", _set((*_POD, "securityContext", "seccompProfile"), None),
     "seccompProfile"),
    ("base/deployment.yaml", _set((*_POD, "securityContext", "runAsNonRoot"), None),
     "runAsNonRoot"),
    ("base/deployment.yaml", _set((*_POD, "initContainers", "name=models", "securityContext",
                                   "capabilities"), None), "capabilities"),
    ("base/deployment.yaml", _set((*_MAIN, "env", "name=ORTSERVE_API_KEYS_FILE", "value"),
                                  "/tmp/api-keys"), "Secret"),
    ("base/deployment.yaml", _set((*_MAIN, "env", "name=ORTSERVE_METRICS_REQUIRE_KEY",
                                   "value"), "false"), "/metrics"),
    ("base/deployment.yaml", _set((*_MAIN, "volumeMounts", "name=keys", "subPath"),
                                  "api-keys"), "subPath"),
    ("base/deployment.yaml", _set((*_POD, "volumes", "name=tmp"), None), "TMPDIR"),
    ("overlays/gpu/gpu.yaml", _set((*_MAIN, "env", "name=ORTSERVE_STRICT_DEVICE", "name"),
                                   "ORTSERVE_ALLOW_UNAUTHENTICATED"), "ALLOW_UNAUTHENTICATED"),
    ("kserve/servingruntime.yaml", _set((*_RUNTIME, "securityContext",
                                         "allowPrivilegeEscalation"), True),
     "allowPrivilegeEscalation"),
    ("kserve/servingruntime.yaml", _set((*_RUNTIME, "env", "name=ORTSERVE_API_KEYS_FILE",
                                         "name"), "UNUSED_KEYS_FILE"), "API keys"),
    ("kserve/servingruntime.yaml", _set((*_RUNTIME, "env", "name=ORTSERVE_ADMIN_KEYS"),
                                        {"name": "ORTSERVE_ADMIN_KEYS",
                                         "value": "a-literal-admin-key"}), "literal"),
    ("kserve/inferenceservice.yaml", _set(("spec", "predictor", "model", "securityContext",
                                           "readOnlyRootFilesystem"), False),
     "readOnlyRootFilesystem"),
]


@pytest.mark.parametrize("file,mutate,expected", CLOSED_MUTATIONS,
                         ids=[f"{m[0]}-{m[2]}" for m in CLOSED_MUTATIONS])
def test_closed_by_default_check_sees_each_opening(kustomize, tmp_path, file, mutate,
                                                   expected):
    root = tmp_path / "kubernetes"
    shutil.copytree(kv.MANIFESTS, root)
    doc = yaml.safe_load((root / file).read_text())
    mutate(doc)
    (root / file).write_text(yaml.safe_dump(doc))
    problems = closed_problems(root)
    assert problems and all(expected in p for p in problems), problems


def test_the_podmonitor_scrapes_with_a_key_the_pods_accept(kustomize):
    objs = rendered("cpu")
    endpoint = objs["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["type"] == "Bearer"
    ref = endpoint["authorization"]["credentials"]
    env = {e["name"]: e for e in container(objs["Deployment"]).get("env", [])}
    accepted = env["ORTSERVE_METRICS_KEYS"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (accepted["name"], accepted["key"]) == \
        (SECRET, "metrics-key")


def test_the_example_secret_is_not_deployed_and_fails_closed():
    """secret.example.yaml names every key the workloads read; no kustomization applies
    it; its placeholders are no keys, and the service refuses to start with them."""
    example = yaml.safe_load((kv.MANIFESTS / "secret.example.yaml").read_text())
    assert (example["kind"], example["metadata"]["name"]) == ("Secret", SECRET)
    data = example["stringData"]
    read = set()
    for _, pod, name in workloads():
        c = next(c for c in pod["containers"] if c["name"] == name)
        read |= {e["valueFrom"]["secretKeyRef"]["key"] for e in c.get("env", [])
                 if "valueFrom" in e}
        read |= {i["key"] for v in pod.get("volumes", []) if "secret" in v
                 for i in v["secret"].get("items", [])}
    assert read == set(data)
    for k in kv.MANIFESTS.rglob("kustomization.yaml"):
        assert "secret.example" not in k.read_text(), k
    minimum = Settings().min_key_length
    assert not [ln for ln in data["api-keys"].splitlines()
                if ln.strip() and not ln.startswith("#") and len(ln.strip()) >= minimum]
    for variable, key in (("ORTSERVE_METRICS_KEYS", "metrics-key"),
                          ("ORTSERVE_ADMIN_KEYS", "admin-keys")):
        with mock.patch.dict(os.environ, {variable: data[key]}, clear=True), \
                pytest.raises(SettingsError):
            load_settings()
