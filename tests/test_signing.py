"""Signed versions (OpenSSF model-signing format, key pairs made here) and the artifact
hardening around them: real folders, the real app over httpx or `ortserve serve`, and the
real CLI. Every refusal leaves the serving version serving."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.cli import main as cli
from app.contract.manifest import MANIFEST_FILE, SIGNATURE_FILE, describe_artifact
from app.contract.publish import new_version
from app.contract.signing import SigningKey, sign_folder
from app.settings import SettingsError, load_settings
from tests.builders import FEATURES, add_rows_model, build_rows_model
from tests.servers import ServiceProcess, metric_value

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]
ADMIN_KEY = "admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Keys:
    private: Path  # trusted: its public key is the server's
    public: Path
    unknown_private: Path  # a key pair the server does not know
    unknown_public: Path


def _pair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    (tmp_path / "keys").mkdir()
    return Keys(*_pair(tmp_path / "keys", "trusted"), *_pair(tmp_path / "keys", "unknown"))


def _sign(folder: Path, private: Path) -> Path:
    return sign_folder(folder, SigningKey(private))


@pytest.fixture
def signed_repo(repo: Path, keys: Keys) -> Path:
    for folder in sorted(repo.glob("*/*")):
        _sign(folder, keys.private)
    return repo


async def _predict(client, version: int | None = None) -> dict:
    body = {"model": "tabular", "inputs": [ROW]} | ({"version": version} if version else {})
    r = await client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    return r.json()


async def _index(client) -> dict:
    r = await client.get("/repository/index", headers=ADMIN)
    assert r.status_code == 200, r.text
    return {(e["name"], e["version"]): e for e in r.json()["models"]}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[60] ^= 1
    path.write_bytes(bytes(data))


def _rewrite_manifest(folder: Path) -> None:
    """Re-hash every file into the manifest, as whoever can write the folder can."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["artifacts"] = {f.name: describe_artifact(f).model_dump()
                             for f in sorted(folder.iterdir())
                             if f.name not in (MANIFEST_FILE, SIGNATURE_FILE)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def test_a_signed_version_serves_under_ortserve_serve(signed_repo, keys, tmp_path):
    """`ortserve serve` with the trusted key as PEM text in ORTSERVE_MODEL_PUBLIC_KEYS;
    the format's own tool verifies the same folder."""
    import httpx

    with ServiceProcess(signed_repo, tmp_path / "serve.log",
                        ORTSERVE_MODEL_PUBLIC_KEYS=keys.public.read_text()) as service:
        r = httpx.post(f"{service.url}/predict", json={"model": "tabular", "inputs": [ROW]})
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        models = httpx.get(f"{service.url}/models").json()
        assert {m["name"] for m in models["models"]} == {"sentiment", "tabular", "regression"}
        text = httpx.get(f"{service.url}/metrics").text
        assert "ortserve_model_load_failures_total{" not in text
    tool = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key",
                           "--signature", str(signed_repo / "tabular/1" / SIGNATURE_FILE),
                           "--public_key", str(keys.public), str(signed_repo / "tabular/1")],
                          capture_output=True, text=True, timeout=120)
    assert tool.returncode == 0, tool.stdout + tool.stderr


def _changed_after_signing(folder: Path, keys: Keys) -> None:
    _flip_a_byte(folder / "model.onnx")


def _manifest_rewritten(folder: Path, keys: Keys) -> None:
    _flip_a_byte(folder / "model.onnx")
    _rewrite_manifest(folder)


def _extra_file(folder: Path, keys: Keys) -> None:
    (folder / "notes.txt").write_text("added after signing")


def _unknown_key(folder: Path, keys: Keys) -> None:
    _sign(folder, keys.unknown_private)


def _missing(folder: Path, keys: Keys) -> None:
    (folder / SIGNATURE_FILE).unlink()


def _another_versions_signature(folder: Path, keys: Keys) -> None:
    shutil.copyfile(folder.parent / "1" / SIGNATURE_FILE, folder / SIGNATURE_FILE)


def _forged(folder: Path, keys: Keys) -> None:
    """The signed statement edited to list the changed file's new digest, its root digest
    recomputed: consistent, but no longer what the key signed."""
    import base64
    import hashlib

    _flip_a_byte(folder / "model.onnx")
    bundle = json.loads((folder / SIGNATURE_FILE).read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    root = hashlib.sha256()
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.onnx":
            resource["digest"] = describe_artifact(folder / "model.onnx").sha256
        root.update(bytes.fromhex(resource["digest"]))
    statement["subject"][0]["digest"]["sha256"] = root.hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(
        json.dumps(statement).encode()).decode()
    (folder / SIGNATURE_FILE).write_text(json.dumps(bundle))


@pytest.mark.parametrize("make_bad,words", [
    (_changed_after_signing, "signature: files do not match (changed: model.onnx)"),
    (_manifest_rewritten, "signature: files do not match (changed: model.json)"),
    (_extra_file, "signature: files do not match (extra: notes.txt)"),
    (_unknown_key, "signature: not made by a trusted key"),
    (_missing, "signature: missing"),
    (_another_versions_signature, "signature: files do not match (changed: model.json)"),
    (_forged, "signature: does not verify with its key"),
])
async def test_a_bad_signature_is_refused_and_the_serving_version_stays(
        make_client, signed_repo, keys, make_bad, words):
    client = await make_client(admin_keys=ADMIN_KEY, model_public_keys=[str(keys.public)])
    before = await _predict(client)
    folder = add_rows_model(signed_repo, "tabular", classifier=True, version=2)
    _sign(folder, keys.private)
    make_bad(folder, keys)
    r = await client.post("/repository/models/tabular/load", json={"version": 2},
                          headers=ADMIN)
    assert r.status_code == 422 and words in r.json()["error"]["message"], r.text
    after = await _predict(client)
    assert after == {**before, "timing": after["timing"]}  # same version, same answer
    idx = await _index(client)
    assert idx[("tabular", 2)]["state"] == "failed" and words in idx[("tabular", 2)]["reason"]
    versions = (await client.get("/models/tabular")).json()["versions"]
    assert any(v["version"] == 2 and words in v["reason"] for v in versions)
    text = (await client.get("/metrics")).text
    assert metric_value(text, 'ortserve_model_load_failures_total{model="tabular",'
                              'reason="signature"}') == 1
    assert (await client.get("/health/ready")).status_code == 200


async def _until(check, timeout: float = 30.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def _publish(root: Path, seed: int, key: SigningKey | None) -> None:
    """A tabular version published as the trainer and `ortserve import` do."""
    with new_version(root, "tabular", key) as writer:
        build_rows_model(writer.dir / "model.onnx", len(FEATURES), True, seed=seed)
        writer.commit({"name": "tabular", "kind": "tabular-classification",
                       "labels": ["no", "yes"],
                       "inputs": {"type": "features",
                                  "features": [{"name": f} for f in FEATURES]},
                       "outputs": {"name": "probabilities"}, "model_file": "model.onnx"})


async def test_polling_loads_a_version_signed_as_published_and_refuses_an_unsigned_one(
        make_client, signed_repo, keys):
    client = await make_client(admin_keys=ADMIN_KEY, model_public_keys=[str(keys.public)],
                               repository_poll_s=0.05)
    _publish(signed_repo, seed=7, key=SigningKey(keys.private))  # signed before the rename
    await _until(lambda: _serves(client, 2))
    _publish(signed_repo, seed=8, key=None)
    key = 'ortserve_model_load_failures_total{model="tabular",reason="signature"}'

    async def refused() -> bool:
        return key in (await client.get("/metrics")).text

    await _until(refused)
    assert (await _predict(client))["version"] == 2
    assert "signature: missing" in (await _index(client))[("tabular", 3)]["reason"]


async def _serves(client, version: int) -> bool:
    return (await _predict(client))["version"] == version


def test_ortserve_sign_and_verify(repo, keys, capsys):
    folder = str(repo / "tabular" / "1")
    assert cli(["verify", folder, "--public-key", str(keys.public)]) == 1
    assert "signature: missing" in capsys.readouterr().out
    assert cli(["sign", folder, "--key", str(keys.private)]) == 0
    capsys.readouterr()
    assert cli(["verify", folder, "--public-key", str(keys.public)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ok: "), out
    # several keys: any of them will do
    assert cli(["verify", folder, "--public-key", str(keys.unknown_public),
                "--public-key", str(keys.public)]) == 0
    capsys.readouterr()
    assert cli(["verify", folder, "--public-key", str(keys.unknown_public)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "not made by a trusted key" in out[0], out
    # a broken version is never signed
    broken = add_rows_model(repo, "tabular", classifier=True, version=2)
    _flip_a_byte(broken / "model.onnx")
    assert cli(["sign", str(broken), "--key", str(keys.private)]) == 1
    assert "SHA-256 does not match" in capsys.readouterr().err
    assert not (broken / SIGNATURE_FILE).exists()


def test_ortserve_import_signs_with_a_key(tmp_path, keys, capsys):
    build_rows_model(tmp_path / "clf.onnx", 4, True)
    models = tmp_path / "models"
    assert cli(["import", str(tmp_path / "clf.onnx"), "--name", "churn", "--kind",
                "tabular-classification", "--labels", "stay,leave", "--models", str(models),
                "--sign-key", str(keys.private)]) == 0
    assert cli(["verify", str(models / "churn" / "1"), "--public-key", str(keys.public)]) == 0
    assert cli(["import", str(tmp_path / "clf.onnx"), "--name", "churn", "--kind",
                "tabular-classification", "--labels", "stay,leave", "--models", str(models),
                "--sign-key", str(keys.public)]) == 2  # a public key cannot sign
    assert "cannot read the private key" in capsys.readouterr().err
    assert not (models / "churn" / "2").exists()


def test_the_trainer_signs_with_a_key(tmp_path, keys, capsys):
    pytest.importorskip("torch")
    from tests.test_training import table_rows, write_csv
    from training.__main__ import main as train_main

    path = write_csv(tmp_path / "t.csv", ["a", "b", "c", "y"], table_rows(120))
    out = tmp_path / "models"
    args = ["tabular", "--csv", str(path), "--target-column", "y", "--output", str(out),
            "--name", "mine"]
    assert train_main([*args, "--sign-key", str(tmp_path / "nope.pem")]) == 2  # at once
    assert not (out / "mine").exists()
    assert train_main([*args, "--sign-key", str(keys.private)]) == 0
    capsys.readouterr()
    assert cli(["verify", str(out / "mine" / "1"), "--public-key", str(keys.public)]) == 0


def test_keys_that_cannot_verify_models_stop_the_start(tmp_path, keys):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (tmp_path / "rsa.pem").write_bytes(rsa_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    for value, words in [(str(tmp_path / "rsa.pem"), "elliptic-curve keys"),
                         (str(tmp_path / "missing.pem"), "cannot read it"),
                         (str(keys.private), "not a PEM public key")]:
        with pytest.raises(SettingsError) as err:
            load_settings(model_public_keys=value)
        assert "ORTSERVE_MODEL_PUBLIC_KEYS" in str(err.value) and words in str(err.value)
    two = f"{keys.public.read_text()},{keys.unknown_public}"  # PEM text and a path
    assert len(load_settings(model_public_keys=two).model_public_keys) == 2
