"""The playground at /ui, end to end: Debian's chromium driven by Playwright against a real
uvicorn serving tiny models. A user types a text, clicks, and reads the predicted label and
the words shaded by their attributions; fills a row and reads the feature bars. Screenshots
are written to a temporary folder, or to $ORTSERVE_TEST_ARTIFACTS when it names one."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.contract.background import write_background
from tests.builders import FEATURES, add_text_model, build_rows_model, write_manifest
from tests.servers import ServiceProcess, module, tool

# the flags a closed network needs (no background connections, no first-run or sync)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui") / "models"
    add_text_model(root, max_length=32)
    folder = root / "rows" / "1"
    folder.mkdir(parents=True)
    build_rows_model(folder / "model.onnx", len(FEATURES), classifier=True)
    rows = np.array([[0.0, 1.0, -1.0, 2.0], [1.0, -0.5, 0.5, 0.0]])
    write_background(folder / "background.json", FEATURES, rows, "test rows",
                     (rows.min(0) - 1, rows.max(0) + 1))
    write_manifest(folder, {
        "name": "rows", "version": 1, "kind": "tabular-classification",
        "labels": ["no", "yes"],
        "inputs": {"type": "features", "features": [{"name": f} for f in FEATURES]},
        "outputs": {"name": "probabilities"}, "model_file": "model.onnx",
        "background_file": "background.json", "test_metrics": {"accuracy": 0.9}})
    svc = ServiceProcess(root, root.parent / "log", ORTSERVE_LOG_LEVEL="warning",
                         ORTSERVE_API_KEYS="secret-key-0123456789").wait_ready()
    try:
        yield svc
    finally:
        svc.terminate()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots go: never into the source tree unless asked to."""
    chosen = os.environ.get("ORTSERVE_TEST_ARTIFACTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(service):
    chromium = tool("chromium")
    sync_api = module("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.csp_violations = []
            page.on("console", lambda m: "Content Security Policy" in m.text
                    and page.csp_violations.append(m.text))
            yield page
            # the page works under its own Content-Security-Policy (no inline styles, no eval)
            assert page.csp_violations == []
        finally:
            browser.close()


def test_the_page_is_served_without_a_key_and_the_api_still_asks_for_one(service):
    page = httpx.get(f"{service.url}/ui/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{service.url}/ui/app.js").status_code == 200
    assert httpx.get(f"{service.url}/models").status_code == 401


def open_model(page, url: str, model: str, kind: str) -> None:
    """Load the page, give it the API key, pick `model` and wait for its card."""
    page.goto(f"{url}/ui/")
    page.fill("#api-key", "secret-key-0123456789")
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector(f"#model option[value={model}]", state="attached")
    page.select_option("#model", model)
    # a locator, not a JS string: the page's Content-Security-Policy forbids eval
    page.locator("#card-facts", has_text=kind).wait_for()


def test_type_a_text_click_and_read_the_label_and_the_shaded_words(service, page, artifacts):
    open_model(page, service.url, "sentiment", "text-classification")
    page.wait_for_selector("#text-form:not([hidden])")
    text = "i love this phone but the day was awful"
    page.fill("#text", text)
    page.click("#explain")
    page.wait_for_selector("#result:not([hidden])")
    label = page.inner_text("#label")
    words = page.eval_on_selector_all(
        "#words .word", "els => els.map(e => [e.textContent, Number(e.dataset.value), "
                        "getComputedStyle(e).backgroundColor])")
    page.screenshot(path=str(artifacts / "playground-text.png"), full_page=True)
    # what the page shows is what the API answers
    api = httpx.post(f"{service.url}/models/sentiment/explain", json={"inputs": [text]},
                     headers={"Authorization": "Bearer secret-key-0123456789"}).json()
    e = api["explanations"][0]
    assert label == e["prediction"]["label"]
    assert [w[0] for w in words] == text.split()
    assert np.allclose([w[1] for w in words], [a["value"] for a in e["attributions"]])
    shaded = [w for w in words if w[2] not in ("rgba(0, 0, 0, 0)", "transparent")]
    assert len(shaded) == len(words)
    # the word with the largest attribution is the most strongly shaded
    alpha = [float(w[2].rsplit(",", 1)[1].rstrip(")")) for w in words]
    top = int(np.argmax([abs(w[1]) for w in words]))
    assert alpha[top] == max(alpha)
    assert "exact" in page.inner_text("#method")
    assert "test accuracy" in page.inner_text("#card-facts")


def test_fill_a_row_and_read_the_feature_bars(service, page, artifacts):
    open_model(page, service.url, "rows", "tabular-classification")
    page.wait_for_selector("#row-form:not([hidden]) input[name=f0]")
    # the form's bounds come from the background's training ranges
    assert page.get_attribute("input[name=f0]", "min") == "-1"
    for name, value in zip(FEATURES, ["1.5", "-2", "0.25", "3"], strict=True):
        page.fill(f"input[name={name}]", value)
    page.click("#explain")
    page.wait_for_selector("#features:not([hidden]) .bar, #error:not([hidden])")
    assert page.is_hidden("#error"), page.inner_text("#error")
    bars = page.eval_on_selector_all(
        "#features .bar", "els => els.map(e => [e.querySelector('.name').textContent, "
                          "Number(e.dataset.value)])")
    page.screenshot(path=str(artifacts / "playground-rows.png"), full_page=True)
    api = httpx.post(f"{service.url}/models/rows/explain",
                     json={"inputs": [{"f0": 1.5, "f1": -2, "f2": 0.25, "f3": 3}]},
                     headers={"Authorization": "Bearer secret-key-0123456789"}).json()
    e = api["explanations"][0]
    assert page.inner_text("#label") == e["prediction"]["label"]
    expected = sorted(e["attributions"], key=lambda a: -abs(a["value"]))
    assert [b[0].split(" = ")[0] for b in bars] == [a["feature"] for a in expected]
    assert np.allclose([b[1] for b in bars], [a["value"] for a in expected])


def test_off_by_a_setting(tmp_path: Path):
    root = tmp_path / "models"
    add_text_model(root)
    svc = ServiceProcess(root, tmp_path / "log", ORTSERVE_UI="false",
                         ORTSERVE_LOG_LEVEL="warning").wait_ready()
    try:
        assert httpx.get(f"{svc.url}/ui/").status_code == 404
    finally:
        svc.terminate()
