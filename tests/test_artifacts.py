"""What the repository reads of a version folder: regular files inside it (a symbolic link
is refused, not followed), sizes checked before a file is read whole, and ONNX graphs that
keep tensors in other files (external data) refused by the repository and by
`ortserve import`. Real folders, the real app over httpx, the real CLI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.cli import main as cli
from app.contract.graphscan import NotAGraph, external_tensors
from app.contract.manifest import MANIFEST_FILE
from app.contract.repository import VersionRejected, verify
from tests.builders import FEATURES, add_rows_model, build_rows_model
from tests.servers import metric_value

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]
ADMIN_KEY = "admin-secret-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def _predict(client) -> dict:
    r = await client.post("/predict", json={"model": "tabular", "inputs": [ROW]})
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_symlinked_artifact_is_refused_not_followed(make_client, repo, tmp_path):
    """The link points at a valid graph whose hash and size the manifest lists: following
    it would load it."""
    client = await make_client(admin_keys=ADMIN_KEY)
    folder = add_rows_model(repo, "tabular", classifier=True, version=2, hidden=64)
    outside = tmp_path / "outside.onnx"
    shutil.move(folder / "model.onnx", outside)
    (folder / "model.onnx").symlink_to(outside)
    r = await client.post("/repository/models/tabular/load", json={"version": 2},
                          headers=ADMIN)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "model.onnx is a symbolic link" in message and "bytes" not in message
    assert (await _predict(client))["version"] == 1
    text = (await client.get("/metrics")).text
    assert metric_value(text, 'ortserve_model_load_failures_total{model="tabular",'
                              'reason="verify"}') == 1


def _external_graph(folder: Path, data_name: str = "weights.bin") -> None:
    """A tabular classifier whose weight matrix lives in `data_name` beside the graph."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1, (len(FEATURES), 2)).astype(np.float32)
    (folder / data_name).write_bytes(w.tobytes())
    tensor = numpy_helper.from_array(w, "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for k, v in (("location", data_name), ("offset", "0"), ("length", str(w.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["probabilities"], axis=-1)], "external",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "model.onnx").write_bytes(model.SerializeToString())


async def test_a_graph_with_external_data_is_refused_even_when_its_data_is_listed(
        make_client, repo):
    from tests.builders import write_manifest

    client = await make_client(admin_keys=ADMIN_KEY)
    folder = repo / "tabular" / "2"
    folder.mkdir()
    _external_graph(folder)
    write_manifest(folder, {  # weights.bin listed and hashed too
        "name": "tabular", "version": 2, "kind": "tabular-classification",
        "labels": ["no", "yes"],
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities"}, "model_file": "model.onnx"})
    r = await client.post("/repository/models/tabular/load", json={"version": 2},
                          headers=ADMIN)
    assert r.status_code == 422, r.text
    assert "model.onnx keeps tensors in other files (external data: w)" in \
        r.json()["error"]["message"]
    assert (await _predict(client))["version"] == 1


def test_ortserve_import_refuses_a_graph_with_external_data(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    _external_graph(source)
    code = cli(["import", str(source / "model.onnx"), "--name", "ext", "--kind",
                "tabular-classification", "--labels", "no,yes",
                "--models", str(tmp_path / "models")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "external data: w" in err[0], err
    assert not (tmp_path / "models" / "ext").exists()


def test_external_data_is_found_where_onnx_finds_it(tmp_path):
    """In a subgraph, a node attribute and a sparse initializer; onnx's own walk is the
    reference."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    def external(name: str) -> onnx.TensorProto:
        t = numpy_helper.from_array(np.ones(2, dtype=np.float32), name)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", f"{name}.bin"
        return t

    def branch(name: str, tensor: onnx.TensorProto | None) -> onnx.GraphProto:
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [2])
        node = helper.make_node("Constant", [], [f"{name}_out"],
                                value=tensor if tensor is not None else
                                numpy_helper.from_array(np.zeros(2, np.float32)))
        return helper.make_graph([node], name, [], [out])

    sparse = helper.make_sparse_tensor(external("sparse_values"),
                                       numpy_helper.from_array(np.array([0, 1]), "idx"), [4])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", external("deep")),
                          else_branch=branch("else", None))],
        "nested", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [external("top")], sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    want = [t.name for t in _get_all_tensors(model) if uses_external_data(t)]
    assert sorted(want) == ["deep", "top"]
    # onnx's walk skips sparse initializers, whose values may live outside as well
    assert sorted(external_tensors(model.SerializeToString())) == sorted(
        [*want, "sparse_values"])
    build_rows_model(tmp_path / "plain.onnx", 4, True, hidden=8)
    assert external_tensors((tmp_path / "plain.onnx").read_bytes()) == []
    with pytest.raises(NotAGraph):
        external_tensors(b'{"model": "json, not protobuf"}')


@pytest.mark.parametrize("make_bad,words", [
    (lambda f: (os.unlink(f / "model.onnx"), os.mkfifo(f / "model.onnx")),
     "model.onnx is not a regular file"),
    (lambda f: (f / MANIFEST_FILE).write_bytes(b" " * (2 << 20)),
     f"{MANIFEST_FILE} is {2 << 20} bytes, more than the {1 << 20}"),
    (lambda f: (os.unlink(f / MANIFEST_FILE),
                os.symlink(f.parent / "1" / MANIFEST_FILE, f / MANIFEST_FILE)),
     f"{MANIFEST_FILE} is a symbolic link"),
])
def test_files_are_checked_before_they_are_read(repo, make_bad, words):
    """A FIFO would block a plain open, an oversized manifest would be read whole."""
    folder = add_rows_model(repo, "tabular", classifier=True, version=2)
    make_bad(folder)
    with pytest.raises(VersionRejected) as err:
        verify("tabular", 2, folder)
    assert words in str(err.value)


