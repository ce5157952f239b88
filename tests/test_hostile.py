"""Hostile input on every protocol, against one real server process (HTTP and gRPC).

Property-based (hypothesis): Open Inference Protocol REST bodies in JSON and with binary
tensors, gRPC `ModelInferRequest`s (and the other RPCs) built from arbitrary field values
or arbitrary bytes, every path parameter of every route, and every header the service
reads. The promise: no 5xx (over gRPC no INTERNAL, UNKNOWN or DATA_LOSS), every refusal in
its protocol's error shape, and no unexpected error in the server's log. Then regression
tests for what `python -m bench hostile` and these properties found.

gRPC goes through Triton's client messages (`tritonclient.grpc.service_pb2`): the app's
own generated module registers the same protobuf package, which a process holds once.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from urllib.parse import quote

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.builders import FEATURES, build_repository
from tests.servers import ServiceProcess, free_port

KEY, ADMIN = "hostile-predict-key-0123456789", "hostile-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODELS = ("sentiment", "tabular", "regression")
MAX_INPUTS = 256
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    port = free_port()
    with ServiceProcess(build_repository(root / "models"), root / "log",
                        ORTSERVE_GRPC_PORT=str(port), ORTSERVE_API_KEYS=KEY,
                        ORTSERVE_ADMIN_KEYS=ADMIN, ORTSERVE_MAX_INPUTS=str(MAX_INPUTS),
                        # arbitrary keys must not lock the tests' own address out
                        ORTSERVE_AUTH_FAILURES_PER_MINUTE="0",
                        ORTSERVE_ADMIN_RATE_LIMIT_PER_S="0", ORTSERVE_DRAIN_DELAY_S="0",
                        ORTSERVE_LOG_LEVEL="warning") as svc:
        svc.grpc = f"127.0.0.1:{port}"
        yield svc


@pytest.fixture(scope="module")
def http(service):
    with httpx.Client(base_url=service.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(service):
    with grpc.insecure_channel(service.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(autouse=True)
def no_unexpected_errors(service):
    """Whatever a test sent, the server logged no unexpected error (a bug answered 500 or
    INTERNAL is logged with its traceback)."""
    before = len(service.logs())
    yield
    new = service.logs()[before:]
    for sign in ("unexpected error", "Traceback", "Exception in ASGI application"):
        assert sign not in new, new[-4000:]


# -- what an answer must look like ---------------------------------------------------------
def v2_answer(r: httpx.Response) -> None:
    """No 5xx; a refusal is the Open Inference Protocol's `{"error": "message"}`."""
    assert r.status_code < 500, (r.status_code, r.text[:1000])
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text[:500]


def infer_answer(r: httpx.Response) -> None:
    """As v2_answer, and a 200 is an inference response (JSON, or JSON then the binary
    outputs)."""
    v2_answer(r)
    if r.status_code == 200:
        length = r.headers.get("inference-header-content-length")
        head = r.content[:int(length)] if length is not None else r.content
        assert isinstance(json.loads(head).get("outputs"), list), r.text[:500]


def v1_answer(r: httpx.Response) -> None:
    """No 5xx; a refusal is the service's own `{"error": {"code", "message", ...}}`."""
    assert r.status_code < 500, (r.status_code, r.text[:1000])
    if r.status_code >= 400:
        error = r.json().get("error")
        assert isinstance(error, dict) and isinstance(error.get("code"), str) and \
            isinstance(error.get("message"), str), r.text[:500]


def grpc_code(call, request, key: str | None = KEY) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() not in SERVER_ERRORS, (exc.code(), exc.details())
        return exc.code()
    return grpc.StatusCode.OK


# -- regressions: what the hostile bench and the properties below found --------------------
def _text_body(**extra) -> str:
    return json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                   "data": ["good day"]}], **extra})


def test_a_timeout_parameter_of_any_size_is_read_not_divided(http):
    """`{"parameters": {"timeout": <400 digits>}}` once answered 500: the integer was too
    large to divide as a float. Any larger value is the server's own timeout; one below
    the timeout header's minimum (50 ms) is a bad request, as for the header (it was a 503
    from admission, for a deadline no request can meet)."""
    def post(value: str) -> httpx.Response:
        body = _text_body(parameters={"timeout": "VALUE"}).replace('"VALUE"', value)
        return http.post("/v2/models/sentiment/infer", content=body.encode(), headers=AUTH)

    for ok in ("9" * 400, "100000", "50000"):
        assert post(ok).status_code == 200, ok
    for bad in ("-" + "9" * 400, "0", "1", "49999", "1.5", "1e400", '"100000"', "true"):
        r = post(bad)
        assert r.status_code == 400 and "timeout" in r.json()["error"], (bad, r.text)


@pytest.mark.parametrize("dim", ["true", '"1"', "1.0", "1.5", "null", "[1]"])
def test_a_shape_is_json_integers(http, dim):
    """`"shape": [true]`, `["1"]` and `[1.0]` once served as `[1]` (pydantic's lax
    integers); the tensor codec's own check refuses booleans but never saw them."""
    body = _text_body().replace('"shape": [1]', f'"shape": [{dim}]')
    r = http.post("/v2/models/sentiment/infer", content=body.encode(), headers=AUTH)
    assert r.status_code == 400 and "shape" in r.json()["error"], r.text


def test_bytes_elements_are_counted_before_any_is_decoded(http, stub):
    """More texts than a request may carry, the last one not UTF-8: refused for their
    count on HTTP (binary data) and gRPC. Every element was once decoded first, on the
    event loop (200,000 one-byte elements held it for 25 ms), and this one said "not
    UTF-8". Within the limit, a bad element is still named by its index."""
    items = [b"good"] * (MAX_INPUTS + 43) + [b"\xff"]
    raw = b"".join(struct.pack("<I", len(b)) + b for b in items)

    def binary(items_raw: bytes, count: int) -> httpx.Response:
        head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [count],
                                       "parameters": {"binary_data_size": len(items_raw)}}]})
        return http.post("/v2/models/sentiment/infer", content=head.encode() + items_raw,
                         headers={**AUTH, "Inference-Header-Content-Length": str(len(head))})

    r = binary(raw, len(items))
    assert r.status_code == 400 and f"the limit is {MAX_INPUTS}" in r.json()["error"], r.text
    request = pb.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(items)])
    request.inputs[0].contents.bytes_contents.extend(items)
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=30)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {MAX_INPUTS}" in failed.value.details()
    r = binary(raw[-(8 + 5):], 2)  # "good", b"\xff"
    assert r.status_code == 400 and "'text'[1]: not UTF-8" in r.json()["error"], r.text


def test_grpc_names_are_parsed_as_paths_are_and_errors_stay_short(stub):
    """A 100 KB model or output name once came back inside the status message, which the
    client refused (over its 16 KiB metadata limit) and reported as RESOURCE_EXHAUSTED.
    Names are now parsed as HTTP paths parse them, and status messages are cut short."""
    long = "m" * 100_000
    metadata = (("authorization", f"Bearer {KEY}"),)
    text = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[1],
        contents=pb.InferTensorContents(bytes_contents=[b"good"]))
    for call, request in (
            (stub.ModelInfer, pb.ModelInferRequest(model_name=long, inputs=[text])),
            (stub.ModelInfer, pb.ModelInferRequest(
                model_name="sentiment", inputs=[text],
                outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=long)])),
            (stub.ModelMetadata, pb.ModelMetadataRequest(name=long)),
            (stub.ModelMetadata, pb.ModelMetadataRequest(name="../sentiment"))):
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=metadata, timeout=30)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
        assert len(failed.value.details()) < 2000
    assert not stub.ModelReady(pb.ModelReadyRequest(name=long), metadata=metadata).ready
    # an empty name is still the default model, as it was
    assert stub.ModelReady(pb.ModelReadyRequest(name=""), metadata=metadata).ready


def test_grpc_repository_calls_need_a_model_name(stub, http):
    """`RepositoryModelUnload` with an empty name once unloaded the default model (the
    registry reads no name as the default one)."""
    admin = (("authorization", f"Bearer {ADMIN}"),)
    for call, request in ((stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest()),
                          (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest())):
        with pytest.raises(grpc.RpcError) as failed:
            call(request, metadata=admin, timeout=30)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for model in MODELS:
        assert http.get(f"/v2/models/{model}/ready", headers=AUTH).status_code == 200


def test_unrouted_v2_paths_answer_in_the_v2_error_shape(http):
    """A /v2 path that no route matches (a name with a slash in it, a wrong method) once
    answered in the service's own error shape, which a v2 client cannot read."""
    for method, path, status in (("GET", "/v2/nope", 404),
                                 ("GET", "/v2/models/a%2Fb/ready", 404),
                                 ("DELETE", "/v2/models/sentiment/infer", 405)):
        r = http.request(method, path, headers=AUTH)
        assert r.status_code == status and isinstance(r.json()["error"], str), r.text
    r = http.get("/nope", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_a_text_request_past_the_count_limit_is_refused_unread(tmp_path):
    """Deciding whether texts are tokenized in a thread once summed the length of every
    one of them on the event loop, however many there were."""
    from app.contract.manifest import MANIFEST_FILE, Manifest
    from app.errors import InvalidInput
    from app.pipelines import build_pipeline
    from tests.builders import add_text_model

    folder = add_text_model(tmp_path)
    manifest = Manifest.model_validate_json((folder / MANIFEST_FILE).read_text())
    pipeline = build_pipeline(manifest, folder, max_inputs=4)

    class Unreadable(Sequence[str]):
        def __len__(self) -> int:
            return 200_000

        def __getitem__(self, i):
            raise AssertionError("an input was read")

    assert pipeline.runs_inline(Unreadable())
    with pytest.raises(InvalidInput, match="the limit is 4"):
        pipeline.preprocess(Unreadable())


@pytest.mark.anyio
async def test_an_explanation_past_the_lane_is_refused_before_it_is_built(make_client,
                                                                        monkeypatch):
    """Eight long texts at the largest budget need 131,072 model inputs, four times what
    the explanation lane holds: they were all built (128 MB of token rows, on a thread
    that holds the GIL in turns with the event loop), then refused for their number. Now
    the count is checked before an input's rows are built."""
    from app.explain.players import TextPlayers

    built = []
    real = TextPlayers.payloads
    monkeypatch.setattr(TextPlayers, "payloads",
                        lambda self, masks: built.append(len(masks)) or real(self, masks))
    client = await make_client(explain_max_queued=100, explain_max_evaluations=80)
    words = " ".join(["good", "bad", "movie", "day", "the"] * 3)  # 15 words, sampled
    r = await client.post("/explain", json={"model": "sentiment", "inputs": [words] * 4,
                                            "max_evaluations": 80, "seed": 1})
    assert r.status_code == 422, r.text
    assert "more than the background lane ever holds (100" in r.json()["error"]["message"]
    assert len(built) == 1  # the first input's rows only: the second's would pass 100


@pytest.mark.parametrize("path, body", [
    ("/predict", {"model": "sentiment", "inputs": ["good"]}),
    ("/models/sentiment/predict", {"inputs": ["good"]}),
    ("/explain", {"model": "sentiment", "inputs": ["good"]}),
    ("/repository/models/sentiment/load", {})])
def test_a_version_in_a_json_body_has_the_path_parameters_bounds(http, path, body):
    """A version in a JSON body took any integer (4,000 digits came back in a 404's
    message); a path parameter takes at most 9 digits. Now both have the same bounds."""
    key = ADMIN if path.startswith("/repository") else KEY
    for version, status in ((10 ** 9, 422), (10 ** 400, 422), (0, 422)):
        raw = json.dumps({**body, "version": "V"}).replace('"V"', str(version))
        r = http.post(path, content=raw.encode(), headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == status, (version, r.text)
        assert r.json()["error"]["details"][0]["field"] == "version", r.text
    r = http.post(path, json={**body, "version": 999_999_999},
                  headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404 and "999999999" in r.text, r.text


def test_bytes_elements_past_the_limit_are_refused_by_their_count_alone(http, stub):
    """A BYTES tensor is texts to every model that takes one, so its declared count is
    checked against ORTSERVE_MAX_INPUTS before its data is walked: binary data whose
    last element overruns, JSON one value short, are refused for their count (the walk
    over 200,000 elements once came first, and these said what was wrong with the data)."""
    n = MAX_INPUTS + 44
    raw = b"".join(struct.pack("<I", 4) + b"good" for _ in range(n - 1)) + b"\xff\xff\0\0x"
    head = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [n],
                                   "parameters": {"binary_data_size": len(raw)}}]})
    r = http.post("/v2/models/sentiment/infer", content=head.encode() + raw,
                  headers={**AUTH, "Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400, r.text
    assert f"{n} BYTES elements, the limit is {MAX_INPUTS}" in r.json()["error"], r.text
    body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [n],
                                   "data": ["good"] * (n - 1)}]})
    r = http.post("/v2/models/sentiment/infer", content=body.encode(), headers=AUTH)
    assert r.status_code == 400, r.text
    assert f"{n} BYTES elements, the limit is {MAX_INPUTS}" in r.json()["error"], r.text
    request = pb.ModelInferRequest(model_name="sentiment")
    request.inputs.add(name="text", datatype="BYTES", shape=[n])
    request.raw_input_contents.append(raw)
    with pytest.raises(grpc.RpcError) as failed:
        stub.ModelInfer(request, metadata=(("authorization", f"Bearer {KEY}"),), timeout=30)
    assert f"{n} BYTES elements, the limit is {MAX_INPUTS}" in failed.value.details()


@pytest.mark.anyio
async def test_large_bodies_are_worked_on_one_at_a_time_off_the_event_loop():
    """Parsing a large body is mostly one C call that holds the GIL: four 1 MiB bodies
    parsed in four threads at once kept the event loop from the GIL for 200 ms (bench
    hostile). One thread does that work for every request, in the request's context; the
    second body waits for the first instead of running beside it."""
    import asyncio
    import threading

    from app.api.edge.body import INLINE_BODY_BYTES, sized_work
    from app.observability.context import request_context, request_id

    loop_thread = threading.get_ident()
    second_started = threading.Event()
    seen = []

    def first() -> bool:
        seen.append((threading.get_ident(), request_id()))
        return second_started.wait(0.5)  # set at once if the second ran beside it

    def second() -> None:
        seen.append((threading.get_ident(), request_id()))
        second_started.set()

    async def one(rid: str, work):
        with request_context(rid):
            return await sized_work(INLINE_BODY_BYTES + 1, work)

    overlapped, _ = await asyncio.gather(one("a", first), one("b", second))
    assert not overlapped
    assert [rid for _, rid in seen] == ["a", "b"]
    assert len({tid for tid, _ in seen}) == 1 and seen[0][0] != loop_thread


@pytest.mark.anyio
async def test_a_tiny_models_explanation_batches_run_off_the_event_loop(make_client,
                                                                      tmp_path, monkeypatch):
    """A tiny model's predictions run on the event loop (microseconds each); its
    explanation batches, a block of background rows per coalition, ran there too: 12 ms
    each, back to back (bench hostile). They run on the model's background thread."""
    import threading

    from app.runtime.batcher import BatchQueue
    from tests.test_explain import W, add_rows, linear_regressor

    add_rows(tmp_path, "linear", lambda f: linear_regressor(f, W, 0.3), classifier=False)
    client = await make_client(tmp_path)
    row = {"model": "linear", "inputs": [[2.0, -1.0, 5.0, 0.5]]}
    for _ in range(20):  # the batcher measures its runs: microseconds, so inline
        assert (await client.post("/predict", json=row)).status_code == 200
    threads: list[str] = []
    real = BatchQueue._timed_run
    monkeypatch.setattr(BatchQueue, "_timed_run", lambda self, payloads: threads.append(
        threading.current_thread().name) or real(self, payloads))
    assert (await client.post("/predict", json=row)).status_code == 200
    assert threads == [threading.current_thread().name]  # inline, on the event loop
    threads.clear()
    r = await client.post("/explain", json={**row, "method": "exact"})
    assert r.status_code == 200, r.text
    assert threads and all(t.startswith("ort-linear-low") for t in threads), threads


# -- strategies ----------------------------------------------------------------------------
big_ints = st.sampled_from([2 ** 24, 2 ** 24 + 1, 2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63,
                            2 ** 64, 10 ** 30, 10 ** 400, -(10 ** 400)])
scalars = (st.none() | st.booleans() | st.integers() | big_ints | st.floats()
           | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=12)
dims = st.integers(-3, 5) | big_ints | st.booleans() | st.floats() | st.text(max_size=3) \
    | st.none()
shapes = (st.lists(st.integers(0, 4), max_size=3) | st.lists(dims, max_size=10)
          | st.sampled_from([[1] * 45, [2 ** 24] * 8, [0]]))
datatypes = st.sampled_from(DATATYPES) | st.text(max_size=6)
tensor_names = st.sampled_from(["text", "features", "value"]) | st.text(max_size=8)
texts = st.text(max_size=40)


def _count(shape: list) -> int | None:
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 64 for d in shape):
        return None
    n = 1
    for d in shape:
        n *= d
    return n if n <= 512 else None


@st.composite
def matching_data(draw, shape: list, datatype: str):
    """Data of the right count (and, mostly, type) for the shape, nested or flat."""
    n = _count(shape)
    if n is None:
        return draw(json_values)
    values: st.SearchStrategy = {
        "BYTES": texts, "BOOL": st.booleans(),
        "FP32": st.floats(width=32, allow_nan=False) | st.integers(-9, 9),
        "FP64": st.floats() | st.integers(-9, 9)}.get(datatype, st.integers(-300, 300)
                                                      | big_ints)
    flat = draw(st.lists(values | scalars, min_size=n, max_size=n))
    if len(shape) == 2 and shape[1] and draw(st.booleans()):
        return [flat[i:i + shape[1]] for i in range(0, n, shape[1])]
    return flat


OUTPUTS = {"sentiment": ["probabilities", "label"], "tabular": ["probabilities", "label"],
           "regression": ["value"]}


@st.composite
def valid_inputs(draw, model: str | None = None):
    """One input the model takes (any model's when None): the request goes as deep as it
    can, to the model and back."""
    text = model == "sentiment" if model in MODELS else draw(st.booleans())
    if text:
        data = draw(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=6))
        shape = draw(st.sampled_from([[len(data)], [len(data), 1]]))
        return {"name": "text", "datatype": "BYTES", "shape": shape, "data": data}
    rows = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(["FP32", "FP64"]))
    data = draw(st.lists(st.floats(-1e6, 1e6, width=32) | st.integers(-5, 5),
                         min_size=rows * 4, max_size=rows * 4))
    if draw(st.booleans()):
        data = [data[i:i + 4] for i in range(0, len(data), 4)]
    return {"name": "features", "datatype": dtype, "shape": [rows, len(FEATURES)],
            "data": data}


@st.composite
def any_input(draw):
    entry = {"name": draw(tensor_names), "datatype": draw(datatypes), "shape": draw(shapes)}
    entry["data"] = draw(matching_data(entry["shape"], entry["datatype"])
                         if draw(st.booleans()) else json_values)
    if draw(st.booleans()):
        entry["parameters"] = draw(st.dictionaries(st.sampled_from(["binary_data_size"])
                                                   | st.text(max_size=5), json_values,
                                                   max_size=2))
    if draw(st.integers(0, 9)) == 0:
        del entry[draw(st.sampled_from(["name", "datatype", "shape", "data"]))]
    return entry


@st.composite
def v2_bodies(draw, model: str | None = None):
    """Mostly one input the model takes, with or without parameters and requested
    outputs; else up to three inputs of anything."""
    if draw(st.integers(0, 2)):
        inputs = [draw(valid_inputs(model))]
    else:
        inputs = draw(st.lists(valid_inputs() | any_input(), max_size=3))
    body: dict = {"inputs": inputs}
    if draw(st.booleans()):
        body["parameters"] = draw(st.fixed_dictionaries({}, optional={
            # microseconds: a JSON integer has no size limit
            "timeout": st.integers() | st.integers(min_value=2 ** 1024) | json_values,
            "binary_data_output": st.booleans() | json_values,
            draw(st.text(max_size=5)): json_values}))
    if draw(st.integers(0, 3)) == 0:
        names = st.sampled_from(OUTPUTS.get(model or "", ["label"])) | texts
        body["outputs"] = draw(st.lists(st.fixed_dictionaries(
            {"name": names},
            optional={"parameters": st.fixed_dictionaries({}, optional={
                "binary_data": st.booleans() | json_values,
                draw(st.text(max_size=4)): json_values})}), max_size=3))
    if draw(st.booleans()):
        body["id"] = draw(texts | json_values)
    return body


def _raw_for(entry: dict) -> bytes:
    data, datatype = entry.get("data"), entry.get("datatype")
    if datatype == "BYTES" and isinstance(data, list) and all(isinstance(x, str) for x in data):
        return b"".join(struct.pack("<I", len(x.encode())) + x.encode() for x in data)
    if datatype in ("FP32", "FP64") and isinstance(data, list):
        try:
            return np.asarray(data, dtype=np.float32 if datatype == "FP32"
                              else np.float64).tobytes()
        except (TypeError, ValueError, OverflowError):
            pass
    return b""


# what HTTP lets a header value hold (no leading or trailing whitespace)
header_bytes = st.lists(st.sampled_from([9, *range(32, 127), *range(128, 256)]),
                        max_size=40).map(lambda b: bytes(b).strip(b" \t"))
# values a header may carry, beyond the well-formed: Unicode digits, signs, exponents,
# thousands of digits, the bytes HTTP allows
header_values = (st.text(alphabet="0123456789", min_size=1, max_size=30).map(str.encode)
                 | st.sampled_from(["\u0663", "\u00b2", "\uff11\uff10", "1e3", "-1", "+5",
                                    "0x10", "1_000", "nan", "inf", "0.01", "1.5", "9" * 10_000,
                                    "7 7", ""]).map(str.encode)
                 | header_bytes)


@st.composite
def binary_requests(draw, model: str | None = None):
    """A v2 body whose inputs carry their data after the JSON, as Triton's binary tensor
    extension sends it, with true or lying sizes and header lengths."""
    body = draw(v2_bodies(model))
    tail = []
    for entry in body["inputs"]:
        if draw(st.booleans()):
            raw = _raw_for(entry) if draw(st.integers(0, 3)) else draw(st.binary(max_size=48))
            entry.pop("data", None)
            size = len(raw) if draw(st.integers(0, 3)) else draw(dims)
            entry["parameters"] = {**(entry.get("parameters") or {}), "binary_data_size": size}
            tail.append(raw)
    head = json.dumps(body).encode()
    length = str(len(head)).encode() if draw(st.integers(0, 3)) else draw(header_values)
    extra = b"" if draw(st.integers(0, 3)) else draw(st.binary(max_size=8))
    return head + b"".join(tail) + extra, length


# -- v2 REST -------------------------------------------------------------------------------
@st.composite
def infer_paths(draw) -> tuple[str, str]:
    model = draw(st.sampled_from(MODELS) if draw(st.integers(0, 5)) else st.just("nope"))
    version = "" if draw(st.integers(0, 2)) else draw(st.sampled_from(["/versions/1",
                                                                       "/versions/2"]))
    return model, f"/v2/models/{model}{version}/infer"


@FUZZ
@given(data=st.data())
def test_v2_json_bodies_never_get_a_server_error(http, data):
    model, path = data.draw(infer_paths())
    body = data.draw(v2_bodies(model))
    infer_answer(http.post(path, content=json.dumps(body).encode(), headers=AUTH))


@FUZZ
@given(data=st.data())
def test_v2_binary_bodies_never_get_a_server_error(http, data):
    model, path = data.draw(infer_paths())
    body, length = data.draw(binary_requests(model))
    infer_answer(http.post(path, content=body,
                           headers={**AUTH, "Inference-Header-Content-Length": length}))


@FUZZ
@given(path=infer_paths().map(lambda target: target[1]), body=st.binary(max_size=300)
       | st.sampled_from(
    [b"[" * 5000, b'{"inputs":' + b"[" * 300 + b"]" * 300 + b"}", b"\xff\xfe{}", b"",
     b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1e999],"data":["a"]}]}',
     b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":[NaN]}]}']))
def test_v2_arbitrary_bytes_never_get_a_server_error(http, path, body):
    infer_answer(http.post(path, content=body, headers=AUTH))


# -- gRPC ----------------------------------------------------------------------------------
CONTENTS = {
    "bool_contents": st.lists(st.booleans(), max_size=8),
    "int_contents": st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), max_size=8),
    "int64_contents": st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), max_size=8),
    "uint_contents": st.lists(st.integers(0, 2 ** 32 - 1), max_size=8),
    "uint64_contents": st.lists(st.integers(0, 2 ** 64 - 1), max_size=8),
    "fp32_contents": st.lists(st.floats(width=32), max_size=12),
    "fp64_contents": st.lists(st.floats(), max_size=12),
    "bytes_contents": st.lists(st.binary(max_size=24), max_size=8),
}
int64s = st.integers(-2 ** 63, 2 ** 63 - 1)
model_names = st.sampled_from([*MODELS, "", "nope"]) | st.text(max_size=20)
versions = st.sampled_from(["", "1", "2", "0", "01", "-1", "\u00b2", "\u0663", "9" * 5000,
                            "1\x00"]) | st.text(max_size=10)


@st.composite
def infer_parameters(draw, target):
    for key in draw(st.lists(st.sampled_from(["timeout", "binary_data_output", "priority"])
                             | st.text(max_size=5), max_size=2)):
        kind = draw(st.sampled_from(["bool_param", "int64_param", "string_param"]))
        value = draw({"bool_param": st.booleans(), "int64_param": int64s,
                      "string_param": st.text(max_size=10)}[kind])
        setattr(target[key], kind, value)


@st.composite
def grpc_inputs(draw, request):
    """Mostly the one input the named model takes; else up to three of anything."""
    if draw(st.integers(0, 2)):
        text = (request.model_name == "sentiment" if request.model_name in MODELS
                else draw(st.booleans()))
        if text:
            items = draw(st.lists(st.text(min_size=1, max_size=20).map(str.encode)
                                  | st.binary(max_size=20), min_size=1, max_size=5))
            t = request.inputs.add(name="text", datatype="BYTES", shape=[len(items)])
            t.contents.bytes_contents.extend(items)
        else:
            rows = draw(st.integers(1, 3))
            t = request.inputs.add(name="features", datatype="FP32", shape=[rows, 4])
            t.contents.fp32_contents.extend(draw(st.lists(
                st.floats(-1e6, 1e6, width=32) | st.floats(width=32), min_size=rows * 4,
                max_size=rows * 4)))
        return
    for _ in range(draw(st.integers(0, 3))):
        t = request.inputs.add(name=draw(tensor_names), datatype=draw(datatypes),
                               shape=draw(st.lists(st.integers(0, 4), max_size=3)
                                          | st.lists(int64s, max_size=10)))
        for field in draw(st.lists(st.sampled_from(sorted(CONTENTS)), max_size=2)):
            getattr(t.contents, field).extend(draw(CONTENTS[field]))
        draw(infer_parameters(t.parameters))


@st.composite
def infer_requests(draw):
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(MODELS) if draw(st.integers(0, 2)) else model_names),
        model_version=draw(st.sampled_from(["", "1"]) if draw(st.booleans()) else versions),
        id=draw(st.text(max_size=8)))
    draw(grpc_inputs(request))
    draw(infer_parameters(request.parameters))
    if draw(st.integers(0, 3)) == 0:
        for name in draw(st.lists(st.sampled_from(OUTPUTS.get(request.model_name, ["label"]))
                                  | texts, max_size=2)):
            request.outputs.add(name=name)
    if draw(st.integers(0, 5)) == 0:
        request.raw_input_contents.extend(draw(st.lists(st.binary(max_size=40), max_size=3)))
    elif draw(st.booleans()):  # the inputs' data as raw contents, as tritonclient sends it
        for t in request.inputs:
            raw = (b"".join(struct.pack("<I", len(b)) + b for b in t.contents.bytes_contents)
                   or np.asarray(t.contents.fp32_contents, np.float32).tobytes())
            request.raw_input_contents.append(raw)
            t.ClearField("contents")
    return request


@FUZZ
@given(request=infer_requests())
def test_grpc_infer_requests_never_get_a_server_error(stub, request):
    grpc_code(stub.ModelInfer, request)


@FUZZ
@given(request=infer_requests(), cuts=st.lists(st.tuples(st.integers(0, 10 ** 6),
                                                         st.integers(0, 255)), max_size=4))
def test_grpc_corrupted_messages_never_get_a_server_error(channel, request, cuts):
    """The bytes of a message with some bytes changed (or cut): no longer a valid message,
    or a different one."""
    data = bytearray(request.SerializeToString())
    for at, value in cuts:
        if data:
            data[at % len(data)] = value
    if cuts and cuts[0][0] % 3 == 0:
        data = data[:cuts[0][0] % (len(data) + 1)]
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    grpc_code(infer, bytes(data))


@FUZZ
@given(name=model_names, version=versions, key=st.sampled_from([KEY, ADMIN, None])
       | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_grpc_other_rpcs_never_get_a_server_error(stub, name, version, key):
    grpc_code(stub.ModelMetadata, pb.ModelMetadataRequest(name=name, version=version), key)
    grpc_code(stub.ModelReady, pb.ModelReadyRequest(name=name, version=version), key)
    grpc_code(stub.ServerMetadata, pb.ServerMetadataRequest(), key)
    grpc_code(stub.RepositoryIndex, pb.RepositoryIndexRequest(repository_name=name), key)
    if name not in MODELS:  # never unload what the other tests use
        grpc_code(stub.RepositoryModelUnload,
                  pb.RepositoryModelUnloadRequest(model_name=name), ADMIN)
    grpc_code(stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=name), key)


# -- path parameters -----------------------------------------------------------------------
path_values = (st.text(max_size=12)
               | st.text(alphabet="0123456789", min_size=1, max_size=5000)
               | st.text(alphabet="\u0660\u0663\u00b2\u00b9\uff11\u09e6\u0e51", min_size=1,
                         max_size=4)
               | st.sampled_from(["%00", "\x00", "1\x00", "0", "01", "-1", "+1", "1.0", " 1",
                                  "1e3", "9" * 10, "a/b", "1", *MODELS]))
INFER_BODY = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "data": ["good day"]}]}).encode()
PREDICT_BODY = json.dumps({"inputs": ["good day"]}).encode()
# (method, path, body, key, shape of its answers)
ROUTES = [
    ("GET", "/models/{name}", None, KEY, v1_answer),
    ("GET", "/models/{name}/versions/{version}", None, KEY, v1_answer),
    ("POST", "/models/{name}/predict", PREDICT_BODY, KEY, v1_answer),
    ("POST", "/models/{name}/explain", PREDICT_BODY, KEY, v1_answer),
    ("POST", "/v2/models/{name}/explain", PREDICT_BODY, KEY, v1_answer),
    ("POST", "/v2/models/{name}/versions/{version}/explain", PREDICT_BODY, KEY, v1_answer),
    ("POST", "/repository/models/{name}/load", None, ADMIN, v1_answer),
    ("POST", "/repository/models/{name}/unload", None, ADMIN, v1_answer),
    ("GET", "/v2/models/{name}", None, KEY, v2_answer),
    ("GET", "/v2/models/{name}/versions/{version}", None, KEY, v2_answer),
    ("GET", "/v2/models/{name}/ready", None, KEY, v2_answer),
    ("GET", "/v2/models/{name}/versions/{version}/ready", None, KEY, v2_answer),
    ("POST", "/v2/models/{name}/infer", INFER_BODY, KEY, infer_answer),
    ("POST", "/v2/models/{name}/versions/{version}/infer", INFER_BODY, KEY, infer_answer),
    ("POST", "/v2/repository/models/{name}/load", None, ADMIN, v2_answer),
    ("POST", "/v2/repository/models/{name}/unload", None, ADMIN, v2_answer),
]


@pytest.mark.parametrize("method, template, body, key, answer", ROUTES,
                         ids=[f"{m} {p}" for m, p, *_ in ROUTES])
def test_every_path_parameter_is_parsed_not_trusted(http, method, template, body, key,
                                                    answer):
    @settings(FUZZ, max_examples=20)
    @given(name=path_values, version=path_values)
    def check(name, version):
        if template.endswith("/unload"):
            assume(name not in MODELS)  # never unload what the other tests use
        # the client resolves dot segments itself: such a path reaches another route
        assume(name not in (".", "..") and version not in (".", ".."))
        path = template.format(name=quote(name, safe=""), version=quote(version, safe=""))
        r = http.request(method, path, content=body, headers={"Authorization":
                                                                  f"Bearer {key}"})
        used = [name] + ([version] if "{version}" in template else [])
        if any(v == "" or "/" in v for v in used):
            # no route matches (or, a trailing slash, one without it): the fallback answers
            # in the shape of the path's protocol
            assert r.status_code in (307, 404), r.text
            if r.status_code == 404:
                (v2_answer if path.startswith("/v2/") else v1_answer)(r)
            return
        answer(r)

    check()


# -- headers -------------------------------------------------------------------------------
# every header the service (and the uvicorn in front of it) reads
HEADERS = ["X-Request-Timeout", "X-Request-ID", "Authorization", "Inference-Header-Content-Length",
           "X-Forwarded-For", "X-Forwarded-Proto", "Content-Type", "Accept", "Connection"]
HEADER_ROUTES = [("POST", "/predict", PREDICT_BODY, v1_answer),
                 ("POST", "/explain", PREDICT_BODY, v1_answer),
                 ("GET", "/models", None, v1_answer),
                 ("POST", "/v2/models/sentiment/infer", INFER_BODY, infer_answer),
                 ("GET", "/v2/models/sentiment/ready", None, v2_answer),
                 ("POST", "/v2/repository/index", None, v2_answer),
                 ("GET", "/repository/index", None, v1_answer),
                 ("GET", "/health/ready", None, v1_answer)]


@FUZZ
@given(route=st.sampled_from(HEADER_ROUTES),
       headers=st.dictionaries(st.sampled_from(HEADERS), header_values, min_size=1,
                               max_size=4),
       bearer=st.booleans())
def test_every_header_is_parsed_not_trusted(http, route, headers, bearer):
    method, path, body, answer = route
    if bearer and "Authorization" in headers:
        headers["Authorization"] = b"Bearer " + headers["Authorization"]
    headers.setdefault("Authorization", f"Bearer {ADMIN if 'repository' in path else KEY}")
    try:
        r = http.request(method, path, content=body, headers=headers)
    except httpx.LocalProtocolError:  # a value the client itself will not send
        return
    answer(r)


@FUZZ
@given(key=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
       timeout=st.floats(0.01, 60))
def test_grpc_metadata_is_parsed_not_trusted(stub, key, timeout):
    metadata = (("authorization", key),)
    try:
        stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        assert exc.code() not in SERVER_ERRORS, exc.details()
