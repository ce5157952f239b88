"""Feature-row validation: exactly the finite numbers within float32 range are accepted, as
lists or as objects, and a batch of accepted rows reaches the model as the float32 matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.contract.manifest import MANIFEST_FILE, Manifest
from app.errors import InvalidInput
from app.pipelines import build_pipeline
from app.pipelines.tabular import F32_MAX
from tests.builders import FEATURES, add_rows_model


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = add_rows_model(tmp_path_factory.mktemp("rows"), "rows", classifier=True)
    manifest = Manifest.model_validate_json((folder / MANIFEST_FILE).read_text())
    return build_pipeline(manifest, folder)


VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),  # doubles of every size, NaN, +-inf
    st.floats(min_value=-F32_MAX, max_value=F32_MAX),
    st.integers(min_value=-10**40, max_value=10**40),
    st.booleans(), st.text(max_size=3), st.none())


def acceptable(v) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)
            and not (isinstance(v, float) and math.isnan(v)) and -F32_MAX <= v <= F32_MAX)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(VALUES, min_size=len(FEATURES), max_size=len(FEATURES)),
                     min_size=1, max_size=4),
       as_objects=st.booleans())
def test_rows_are_accepted_exactly_when_every_value_is_a_float32_number(pipeline, rows,
                                                                        as_objects):
    inputs = [dict(zip(FEATURES, r, strict=True)) for r in rows] if as_objects else rows
    bad = [(i, j) for i, r in enumerate(rows) for j, v in enumerate(r) if not acceptable(v)]
    if bad:
        with pytest.raises(InvalidInput) as err:
            pipeline.preprocess(inputs)
        i, j = bad[0]  # the first offending value, in row then feature order
        assert err.value.details["field"] == f"inputs[{i}][{j}]"
        assert err.value.details["feature"] == FEATURES[j]
        return
    payloads, costs = pipeline.preprocess(inputs)
    assert costs == [1] * len(rows)
    matrix = pipeline.collate(payloads)["features"]
    assert matrix.dtype == np.float32 and matrix.shape == (len(rows), len(FEATURES))
    assert np.isfinite(matrix).all()
    np.testing.assert_array_equal(matrix, np.array(rows, dtype=np.float64).astype(np.float32))


def test_a_run_that_shrinks_the_arena_answers_as_a_plain_run(tmp_path):
    """The warm-up's last run hands the CPU arena's unused memory back
    (`python -m bench memory` measures the effect); its answer is the plain run's."""
    from app.runtime.session import create_session
    from tests.builders import build_rows_model

    build_rows_model(tmp_path / "m.onnx", 4, classifier=True, hidden=64)
    session = create_session(tmp_path / "m.onnx", device="cpu", strict=True)
    feeds = {"features": np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)}
    np.testing.assert_array_equal(session.run_and_shrink(feeds), session.run(feeds))
