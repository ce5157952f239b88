"""ORTSERVE_MODEL_VARIANT=auto: every variant the manifest says is accurate enough is timed
at load on this host, and the fastest serves; `manifest` and warmup=false keep the
manifest's default."""

from __future__ import annotations

import pytest

from app.contract.manifest import Manifest, eligible_variants
from app.serving.loader import choose_variant
from tests.builders import add_distilled_model, add_variants_model
from tests.servers import metric_value

pytestmark = pytest.mark.anyio
ROW = [0.5, -1.0, 2.0, 0.25]


def test_only_variants_within_the_accuracy_and_batch_drift_rule_are_eligible(tmp_path):
    folder = add_variants_model(tmp_path)
    manifest = Manifest.model_validate_json((folder / "model.json").read_text())
    assert eligible_variants(manifest) == {"slow": "slow.onnx", "fast": "fast.onnx"}


def test_the_default_wins_ties_and_loses_to_a_clearly_faster_variant():
    assert choose_variant({"int8": 100.0, "fp32": 97.0}, "fp32")[0] == "fp32"
    assert choose_variant({"int8": 100.0, "fp32": 90.0}, "fp32")[0] == "int8"
    chosen, why = choose_variant({"int8": 100.0, "fp32": 50.0}, "int8")
    assert chosen == "int8" and "int8 100 inputs/s, fp32 50 inputs/s" in why


async def test_auto_serves_the_fastest_eligible_variant(make_client, repo):
    add_variants_model(repo)
    # On one CPU thread the slow variant's hidden layer costs it an order of magnitude on
    # any host; on a GPU both would cost a kernel launch, a tie the default wins.
    client = await make_client(instances=1, device="cpu", intra_op_threads=1)
    info = next(m for m in (await client.get("/models")).json()["models"]
                if m["name"] == "variants")
    assert info["variant"] == "fast" and info["model_file"] == "fast.onnx"
    assert set(info["variant_rates"]) == {"slow", "fast"}  # wrong and drifty never timed
    assert "fastest on this host" in info["variant_reason"]
    detail = (await client.get("/models/variants")).json()
    assert (detail["variant"], detail["variant_rates"]) == ("fast", info["variant_rates"])
    r = await client.post("/predict", json={"model": "variants", "inputs": [ROW]})
    assert r.status_code == 200
    m = (await client.get("/metrics")).text
    assert metric_value(m, 'ortserve_model_info{kind="tabular-classification",'
                           'model="variants",') == 1
    assert 'model="variants",provider="CPUExecutionProvider"' in m and 'variant="fast"' in m
    for v in ("slow", "fast"):
        assert metric_value(
            m, f'ortserve_model_variant_rate{{model="variants",variant="{v}",version="1"}}') \
            == info["variant_rates"][v]


@pytest.mark.parametrize("overrides", [{"model_variant": "manifest"}, {"warmup": False}],
                         ids=["manifest", "no-warmup"])
async def test_manifest_and_no_warmup_serve_the_manifests_default(make_client, repo,
                                                                  overrides):
    add_variants_model(repo)
    client = await make_client(instances=1, **overrides)
    info = next(m for m in (await client.get("/models")).json()["models"]
                if m["name"] == "variants")
    assert (info["variant"], info["variant_rates"]) == ("slow", {})


async def test_a_named_variant_is_served_as_asked(make_client, repo):
    add_variants_model(repo)
    client = await make_client(instances=1, model_variant={"variants": "wrong"})
    info = next(m for m in (await client.get("/models")).json()["models"]
                if m["name"] == "variants")
    assert info["variant"] == "wrong"


@pytest.mark.parametrize("budget, served", [(0.0, "teacher"), (0.01, "teacher"),
                                            (0.03, "student")])
async def test_a_student_serves_only_within_the_accuracy_budget(make_client, repo, budget,
                                                                  served):
    """ORTSERVE_ACCURACY_BUDGET: a distilled student 2 points below its teacher is timed
    (and, an order of magnitude faster on one CPU thread, served) only when the budget
    allows 2 points; /models says so."""
    add_distilled_model(repo)
    client = await make_client(instances=1, device="cpu", intra_op_threads=1,
                               accuracy_budget=budget, models=["distilled"])
    info = (await client.get("/models/distilled")).json()
    assert info["variant"] == served
    if served == "student":
        assert set(info["variant_rates"]) == {"teacher", "student"}
        assert "ORTSERVE_ACCURACY_BUDGET=0.03" in info["variant_reason"]
        assert "0.0200 below the most accurate variant" in info["variant_reason"]
    else:
        assert "student" not in info["variant_rates"]


async def test_models_report_the_served_graphs_calibration(make_client, repo):
    add_distilled_model(repo)
    client = await make_client(models=["distilled"], model_variant="manifest")
    summary = (await client.get("/models")).json()["models"][0]
    assert summary["calibration"]["ece_after"] == 0.018
    assert summary["calibration"]["temperature"] == 1.25
    detail = (await client.get("/models/distilled")).json()
    assert detail["calibration"] == summary["calibration"]
    assert detail["test_metrics"] == {"accuracy": 0.90}
