"""shap's own explainers on a feature model's ONNX graph and background rows, for
`python -m bench shap` (runs in .peers/shap, imports nothing from `app`). Prints JSON: per
explainer, milliseconds per row and the attributions of each row."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import shap

folder, rows_json = Path(sys.argv[1]), sys.argv[2]
manifest = json.loads((folder / "model.json").read_text())
background = np.asarray(json.loads((folder / manifest["background_file"]).read_text())["rows"],
                        dtype=np.float32)
rows = np.asarray(json.loads(rows_json), dtype=np.float32)
session = ort.InferenceSession(str(folder / manifest["model_file"]),
                               providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name


def f(x):
    return session.run(None, {name: np.asarray(x, dtype=np.float32)})[0][:, 0]


out = {"shap": shap.__version__}
masker = shap.maskers.Independent(background, max_samples=len(background))
for label, explainer in (("exact", shap.explainers.Exact(f, masker)),
                         ("permutation", shap.explainers.Permutation(f, masker, seed=0))):
    explainer(rows[:1])  # first call: numba compilation and set-up
    t0 = time.perf_counter()
    result = explainer(rows)
    ms = (time.perf_counter() - t0) * 1000 / len(rows)
    out[label] = {"ms_per_row": ms, "values": result.values.tolist(),
                  "base": np.asarray(result.base_values).tolist()}
print(json.dumps(out))
