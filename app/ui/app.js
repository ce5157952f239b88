// The playground: the public API only (GET /models, GET /models/{name},
// POST /models/{name}/explain). No build step; served by ortserve at /ui.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { detail: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, body) {
  const r = await fetch(path, body === undefined
    ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = data.error || {};
    throw new Error(`${r.status} ${e.code || ""}: ${e.message || r.statusText}`);
  }
  return data;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
  $("error").hidden = !err;
}

function fmt(x) {
  return Math.abs(x) >= 100 ? x.toFixed(1) : Math.abs(x) >= 1 ? x.toFixed(3) : x.toFixed(4);
}

// A bar of `value`: from the middle, left or right by sign (attributions), or from the left
// edge (`fromLeft`: probabilities).
function bar(name, value, scale, title, fromLeft) {
  const row = document.createElement("div");
  row.className = "bar";
  const share = scale > 0 ? Math.min(1, Math.abs(value) / scale) : 0;
  row.innerHTML = `<span class="name"></span><span class="track">` +
    `<span class="fill ${value >= 0 ? "pos" : "neg"}"></span></span>` +
    `<span class="num"></span>`;
  // set through the CSSOM: the page's Content-Security-Policy forbids inline style attributes
  const fill = row.querySelector(".fill").style;
  if (fromLeft) {
    fill.left = "0";
    fill.width = `${share * 100}%`;
  } else {
    fill[value >= 0 ? "left" : "right"] = "50%";
    fill.width = `${share * 50}%`;
  }
  row.querySelector(".name").textContent = name;
  row.querySelector(".name").title = title || name;
  row.querySelector(".num").textContent = fromLeft ? fmt(value) : (value >= 0 ? "+" : "") + fmt(value);
  row.dataset.value = value;
  return row;
}

async function loadModels() {
  const list = await api("/models");
  const select = $("model");
  const previous = select.value;
  select.innerHTML = "";
  for (const m of list.models) {
    const o = document.createElement("option");
    o.value = m.name;
    o.textContent = `${m.name}${m.status === "ready" ? "" : ` (${m.status})`}`;
    o.disabled = m.status !== "ready";
    select.appendChild(o);
  }
  const ready = list.models.filter((m) => m.status === "ready").map((m) => m.name);
  // keep the user's pick; else the server's default model; else the first ready one
  const pick = [previous, list.default_model, ready[0]].find((n) => n && ready.includes(n));
  if (pick) select.value = pick;
  await pickModel();
}

async function pickModel() {
  showError(null);
  $("result").hidden = true;
  const name = $("model").value;
  const d = await api(`/models/${encodeURIComponent(name)}`);
  if ($("model").value !== name) return; // another model was picked meanwhile
  const same = state.detail && state.detail.name === d.name && state.detail.version === d.version;
  state.detail = d;
  const text = d.kind === "text-classification";
  $("text-form").hidden = !text;
  $("row-form").hidden = text;
  if (!text && !same) buildRowForm(d); // the same version keeps what the user typed
  $("explain").disabled = d.explainable === false;
  $("status").textContent = d.explainable === false
    ? "this model cannot be explained (no background rows)" : "";
  showCard(d);
}

function buildRowForm(d) {
  const form = $("row-form");
  form.innerHTML = "";
  const ranges = d.feature_ranges || (d.inputs.features || []).map((f) => ({ name: f.name }));
  for (const f of ranges) {
    const label = document.createElement("label");
    label.textContent = f.name;
    const input = document.createElement("input");
    input.type = "number";
    input.step = "any";
    input.name = f.name;
    if (f.min !== undefined) {
      input.min = f.min;
      input.max = f.max;
      input.title = `training range ${fmt(f.min)} to ${fmt(f.max)}`;
    }
    input.value = f.typical !== undefined ? +f.typical.toPrecision(4) : 0;
    label.appendChild(input);
    form.appendChild(label);
  }
}

function showCard(d) {
  const facts = {
    version: d.version, kind: d.kind, variant: d.variant || "-",
    provider: d.provider, labels: (d.labels || []).join(", ") || "- (regressor)",
  };
  const metrics = d.test_metrics || {};
  for (const k of ["accuracy", "macro_f1", "roc_auc", "mae", "rmse", "r2"]) {
    if (typeof metrics[k] === "number") facts[`test ${k}`] = metrics[k].toFixed(4);
  }
  if (metrics.n) facts["test inputs"] = metrics.n;
  const cal = d.calibration;
  if (cal && typeof cal.ece_after === "number") {
    // calibrated: among answers scored 0.9, about 9 in 10 were right on the test split
    facts.calibration = `temperature ${cal.temperature.toFixed(3)}; expected calibration ` +
      `error ${cal.ece_after.toFixed(4)} (was ${cal.ece_before.toFixed(4)}), Brier ` +
      `${cal.brier_after.toFixed(4)} on ${cal.n} test inputs`;
  }
  facts["explanation baseline"] = d.explain_baseline || "-";
  const dl = $("card-facts");
  dl.innerHTML = "";
  for (const [k, v] of Object.entries(facts)) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    dl.append(dt, dd);
  }
  $("card").hidden = false;
}

function inputs() {
  if (state.detail.kind === "text-classification") return [$("text").value];
  const row = {};
  for (const input of $("row-form").querySelectorAll("input")) row[input.name] = Number(input.value);
  return [row];
}

async function explain() {
  showError(null);
  $("explain").disabled = true;
  $("status").textContent = "explaining...";
  try {
    const t0 = performance.now();
    const name = state.detail.name;
    const body = await api(`/models/${encodeURIComponent(name)}/explain`, { inputs: inputs() });
    showResult(body.explanations[0]);
    $("status").textContent = `${Math.round(performance.now() - t0)} ms`;
  } catch (err) {
    showError(err);
    $("status").textContent = "";
  } finally {
    $("explain").disabled = false;
  }
}

function showResult(e) {
  const p = e.prediction;
  $("label").textContent = p.label !== undefined ? p.label : fmt(p.value);
  $("score").textContent = p.score !== undefined ? `(${(p.score * 100).toFixed(1)}%)` : "";
  const probs = $("probabilities");
  probs.innerHTML = "";
  for (const [label, s] of Object.entries(p.scores || {})) {
    probs.appendChild(bar(label, s, 1, label, true));
  }
  const se = e.attributions.some((a) => a.standard_error !== undefined && a.standard_error !== null);
  $("method").textContent = `Shapley values of ${e.explained === "value" ? "the predicted value"
    : `P(${e.explained})`}: ${fmt(e.base_value)} at the baseline, ${fmt(e.value)} for this input; ` +
    `${e.method === "exact" ? "exact" : "sampled (antithetic permutations)"}, ` +
    `${e.evaluations} model evaluations${se ? ", hover for the standard error" : ""}.`;
  $("baseline").textContent = `Green: towards ${e.explained === "value" ? "a higher value"
    : e.explained}; red: away from it. Baseline: ${e.baseline}.` +
    (e.dropped_words ? ` ${e.dropped_words} word(s) past the model's length were not explained.` : "");
  const scale = Math.max(1e-12, ...e.attributions.map((a) => Math.abs(a.value)));
  const words = $("words");
  const features = $("features");
  words.innerHTML = "";
  features.innerHTML = "";
  if (e.attributions.length && e.attributions[0].word !== undefined) {
    for (const a of e.attributions) {
      const span = document.createElement("span");
      span.className = "word";
      span.textContent = a.word;
      const alpha = Math.abs(a.value) / scale;
      span.style.background = `rgba(var(${a.value >= 0 ? "--pos" : "--neg"}), ${0.08 + 0.6 * alpha})`;
      span.dataset.value = a.value;
      span.title = `${a.value >= 0 ? "+" : ""}${fmt(a.value)}` +
        (a.standard_error != null ? ` +- ${fmt(a.standard_error)}` : "");
      words.append(span, " ");
    }
    words.hidden = false;
    features.hidden = true;
  } else {
    const sorted = [...e.attributions].sort((x, y) => Math.abs(y.value) - Math.abs(x.value));
    for (const a of sorted) {
      features.appendChild(bar(`${a.feature} = ${fmt(a.input)}`, a.value, scale,
        a.standard_error != null ? `+- ${fmt(a.standard_error)}` : a.feature));
    }
    features.hidden = false;
    words.hidden = true;
  }
  $("result").hidden = false;
}

$("model").addEventListener("change", () => pickModel().catch(showError));
$("explain").addEventListener("click", explain);
$("api-key").addEventListener("change", () => loadModels().catch(showError));
loadModels().catch(showError);
