"""Shapley values of a set function, exactly or by antithetic permutation sampling.

The caller supplies `value(coalitions) -> values`: a boolean matrix, one row per coalition
(True = that player is present), to one number per row. Both estimators ask for all the
coalitions of one round at once, so that the caller can run them as one model batch.

Exact: phi_i = sum over coalitions S without i of |S|! (n - |S| - 1)! / n! (v(S + i) - v(S)),
from all 2^n coalitions.

Sampled: for a random order of the players, each player's marginal contribution when it
joins those before it; averaged over orders. Orders come in antithetic pairs (an order and
its reverse), which cancels much of the variance for monotone models. The marginal
contributions along any one order sum to v(all) - v(none), so the estimate is exactly
efficient whatever the number of orders; the standard error is reported per player, from
the spread of the pair means.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ValueFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Attribution:
    values: np.ndarray  # one per player
    base: float  # v(no player)
    full: float  # v(every player)
    method: str  # "exact" or "permutation"
    evaluations: int  # coalitions evaluated
    standard_error: np.ndarray | None = None  # per player, for a sampled estimate


def exact_cost(n: int) -> int:
    return 2 ** n


def permutation_cost(n: int, pairs: int) -> int:
    """Coalitions evaluated for `pairs` antithetic pairs: the empty and full coalitions once,
    then n - 1 prefixes for each of the 2 x pairs orders (at most, before de-duplication)."""
    return 2 + 2 * pairs * max(n - 1, 0)


class Plan:
    """The coalitions one estimate needs (`masks`, evaluated by the caller in any way, e.g.
    as model batches), and how to turn their values into attributions."""

    def __init__(self, n: int, method: str, masks: np.ndarray,
                 orders: list[np.ndarray] | None = None,
                 prefix_rows: list[list[int]] | None = None) -> None:
        self.n, self.method, self.masks = n, method, masks
        self._orders, self._prefix_rows = orders, prefix_rows

    @property
    def evaluations(self) -> int:
        return len(self.masks)

    def attribute(self, values: np.ndarray) -> Attribution:
        v = np.asarray(values, dtype=np.float64)
        if len(v) != len(self.masks):
            raise ValueError(f"{len(v)} values for {len(self.masks)} coalitions")
        if self.method == "exact":
            return self._exact(v)
        return self._sampled(v)

    def _exact(self, v: np.ndarray) -> Attribution:
        n = self.n
        if n == 0:
            return Attribution(np.zeros(0), float(v[0]), float(v[0]), "exact", 1)
        codes = np.arange(2 ** n, dtype=np.int64)
        sizes = self.masks.sum(axis=1)
        weights = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
                            for s in range(n)])
        phi = np.zeros(n)
        for i in range(n):
            s = codes[~self.masks[:, i]]
            phi[i] = np.sum(weights[sizes[s]] * (v[s | (1 << i)] - v[s]))
        return Attribution(phi, float(v[0]), float(v[-1]), "exact", len(codes))

    def _sampled(self, v: np.ndarray) -> Attribution:
        orders, n = self._orders or [], self.n
        pairs = len(orders) // 2
        contributions = np.zeros((len(orders), n))
        for j, (order, rows) in enumerate(zip(orders, self._prefix_rows or [], strict=True)):
            contributions[j, order] = np.diff(v[rows])
        pair_means = contributions.reshape(pairs, 2, n).mean(axis=1)
        phi = pair_means.mean(axis=0)
        se = (pair_means.std(axis=0, ddof=1) / math.sqrt(pairs) if pairs > 1
              else np.full(n, np.nan))
        return Attribution(phi, float(v[0]), float(v[1]), "permutation", len(v), se)


def exact_plan(n: int) -> Plan:
    """All 2^n coalitions; row k is the coalition whose bits are k (row 0: nobody)."""
    codes = np.arange(2 ** n, dtype=np.int64)
    masks = ((codes[:, None] >> np.arange(n)) & 1).astype(bool)
    return Plan(n, "exact", masks)


def permutation_plan(n: int, pairs: int, seed: int) -> Plan:
    """`pairs` antithetic pairs of random orders (seeded); rows 0 and 1 are the empty and
    full coalitions, then each distinct proper prefix once."""
    rng = np.random.default_rng(seed)
    orders = []
    for _ in range(max(1, pairs)):
        order = rng.permutation(n)
        orders += [order, order[::-1].copy()]
    masks = [np.zeros(n, dtype=bool), np.ones(n, dtype=bool)]
    index: dict[bytes, int] = {masks[0].tobytes(): 0, masks[1].tobytes(): 1}
    prefix_rows = []
    for order in orders:
        mask = np.zeros(n, dtype=bool)
        rows = [0]
        for k in range(n - 1):
            mask[order[k]] = True
            key = mask.tobytes()
            if key not in index:
                index[key] = len(masks)
                masks.append(mask.copy())
            rows.append(index[key])
        rows.append(1)
        prefix_rows.append(rows)
    return Plan(n, "permutation", np.stack(masks), orders, prefix_rows)


# A sampled estimate needs at least this many antithetic pairs to report a standard error.
MIN_PAIRS = 2


def pairs_for_budget(n: int, budget: int) -> int:
    """The most antithetic pairs whose coalitions fit `budget`."""
    return (budget - 2) // max(2 * (n - 1), 1)


def plan(n: int, budget: int, exact_max_players: int, seed: int,
         method: str = "auto") -> Plan:
    """Exact when n <= exact_max_players and 2^n coalitions fit the budget (or when asked
    and it fits), else antithetic permutation sampling within the budget. Fewer than two
    players: exact, which costs at most 2 coalitions."""
    fits = exact_cost(n) <= budget
    if n < 2 or (method == "exact" and fits) or (
            method == "auto" and n <= exact_max_players and fits):
        return exact_plan(n)
    if method == "exact":
        raise ValueError(f"exact Shapley values of {n} players need {exact_cost(n)} "
                         f"coalitions, over the budget of {budget}")
    pairs = pairs_for_budget(n, budget)
    if pairs < MIN_PAIRS:
        raise ValueError(f"sampling Shapley values of {n} players needs at least "
                         f"{permutation_cost(n, MIN_PAIRS)} coalitions ({MIN_PAIRS} antithetic "
                         f"pairs of orders), over the budget of {budget}")
    return permutation_plan(n, pairs, seed)


def shapley(n: int, value: ValueFn, budget: int, exact_max_players: int, seed: int,
            method: str = "auto") -> Attribution:
    """`plan`, evaluated by `value` in one call."""
    p = plan(n, budget, exact_max_players, seed, method)
    return p.attribute(value(p.masks))
