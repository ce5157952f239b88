"""Temperature scaling: one scalar T fitted on the validation split, folded into the graph.

A classifier's probabilities become softmax(logits / T) (sigmoid(logit / T) for a binary
head). T > 1 softens over-confident scores, T < 1 sharpens timid ones; the argmax, and so
accuracy, never changes. The manifest records the expected calibration error (ECE, 15
equal-width confidence bins) and the Brier score on the test split before and after.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
# T is searched on log T in [log MIN, log MAX]; outside that range something else is wrong.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def as_logits(probs: np.ndarray) -> np.ndarray:
    """Logits up to a per-row constant, which softmax ignores (a probability of 0 maps to a
    very negative logit rather than -inf, so a temperature can still be applied)."""
    return np.log(np.clip(probs.astype(np.float64), 1e-300, None))


def binary_logits(logit: np.ndarray) -> np.ndarray:
    """A binary head's single logit as two-class logits [0, z] (softmax of them = sigmoid)."""
    z = np.asarray(logit, dtype=np.float64).reshape(-1)
    return np.stack([np.zeros_like(z), z], axis=1)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of `y` under softmax(logits / T)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    res = minimize_scalar(lambda t: nll(logits, y, float(np.exp(t))),
                          bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
                          method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: sum over equal-width confidence bins of |accuracy - mean confidence|,
    weighted by the share of inputs in the bin."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y)
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes in bin 0
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def brier_score(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean over inputs of sum over classes of (p - one-hot)^2 (0 is perfect, 2 the worst)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(y)), np.asarray(y)] = 1.0
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def report(temperature: float, fitted_on: str, y_test: np.ndarray, before: np.ndarray,
           after: np.ndarray) -> dict:
    """The manifest's `calibration` block: T and the test split's ECE/Brier before and after."""
    return {
        "method": "temperature",
        "temperature": round(float(temperature), 6),
        "fitted_on": fitted_on,
        "bins": ECE_BINS,
        "n": int(len(y_test)),
        "ece_before": round(expected_calibration_error(before, y_test), 4),
        "ece_after": round(expected_calibration_error(after, y_test), 4),
        "brier_before": round(brier_score(before, y_test), 4),
        "brier_after": round(brier_score(after, y_test), 4),
    }


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits) from softmax(logits / T): the graph's own output without T."""
    return softmax(as_logits(probs) * temperature)
