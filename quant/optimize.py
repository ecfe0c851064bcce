"""The exact allocator: a type per block, minimum total cost within a size budget.

Choosing one type per block under a byte budget is a multiple-choice knapsack. Every
block's size under every type is a whole number of bytes, and all of them share a large
common divisor (the blocks are made of 256-value rows), so the knapsack is solved exactly
by dynamic programming over budget units of that divisor: for FLUX.1-dev a few tens of
thousands of units, a few milliseconds per target. It is optimal at *every* budget, not
only at the breakpoints a greedy schedule happens to visit.

With a speed profile a second budget joins: the predicted step time over the unquantized model's
(a GGUF samples slower because every weight is dequantized at every step, and how much
slower depends on the types). Two budgets make the choice a small integer program (one
binary per block and type, an equality per block, two knapsack rows), solved by HiGHS
(scipy) to a proven optimum; its answer is then checked exactly against both budgets.
Without a slowdown budget the dynamic programme above runs alone, as before.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import reduce
from typing import TYPE_CHECKING

import numpy as np

from .models import Model
from .recipe import Recipe
from .tensor_plan import plan_tensors, tensor_type

if TYPE_CHECKING:
    from .speed import SpeedProfile

GiB = 2**30
GB = 10**9  # file sizes are given in decimal GB, as drives are sold; a "12 GB" card has 12 GiB
# Bytes a GGUF spends outside tensor data (header, names, metadata, alignment); a size
# target reserves this much so the file, not just its data, fits.
HEADER_RESERVE = 2**20
# "Fits an N GB card": the model may take the card's memory less this headroom, which
# covers the CUDA context, FLUX's activations at 1024x1024 and the VAE decode.
CARD_HEADROOM_GIB = 2.0


# More bytes than any file will hold: a larger target means no limit.
NO_LIMIT = 2**62


class TargetError(ValueError):
    """A target the allowed, costed types cannot meet, or a malformed one."""


def _check_positive(value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise TargetError(f"target must be a positive number, got {value!r}")
    return value


@dataclass(frozen=True)
class Target:
    """Upper bound on the model: bits per parameter, file bytes, or a card's GiB."""

    bpw: float | None = None
    size_bytes: int | None = None
    card_gib: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.bpw, self.size_bytes, self.card_gib) if v is not None]
        if len(given) != 1:
            raise TargetError("give exactly one target: bits per parameter, file size or card size")
        _check_positive(given[0])

    @classmethod
    def of(cls, bpw: float | None = None, size_gb: float | None = None, card_gb: float | None = None) -> Target:
        """A target as users give it: bits per parameter, a file size in GB, or a card's GB."""
        if size_gb is not None:
            size_gb = min(_check_positive(size_gb) * GB, NO_LIMIT)
        return cls(bpw=bpw, size_bytes=None if size_gb is None else int(size_gb), card_gib=card_gb)

    def data_budget(self, total_params: int) -> int:
        """Bytes available to tensor data (at most NO_LIMIT)."""
        if self.bpw is not None:
            budget = self.bpw * total_params / 8
        elif self.size_bytes is not None:
            budget = self.size_bytes - HEADER_RESERVE
        else:
            budget = (self.card_gib - CARD_HEADROOM_GIB) * GiB - HEADER_RESERVE
        return math.floor(min(budget, NO_LIMIT))

    def describe(self) -> str:
        if self.bpw is not None:
            return f"{self.bpw:g} bits per parameter"
        if self.size_bytes is not None:
            return f"a file of at most {self.size_bytes / GiB:.2f} GiB"
        return f"a {self.card_gib:g} GB card ({self.card_gib - CARD_HEADROOM_GIB:g} GiB for the model)"


@dataclass(frozen=True)
class Allocation:
    recipe: Recipe
    predicted_cost: float
    bpw: float  # over every tensor in the file
    data_bytes: int  # tensor data, all tensors
    predicted_slowdown: float | None = None  # step time over the unquantized model's, with a speed profile

    @property
    def types(self) -> tuple[str, ...]:
        return self.recipe.types


@dataclass(frozen=True)
class BlockOptions:
    """Per block: the allowed, costed types with their exact bytes; plus the fixed part."""

    options: list[list[tuple[str, int, float]]]  # [block] -> (type, bytes, cost)
    fixed_bytes: int  # tensors no recipe decides (F32)
    total_params: int
    # with a speed profile: [block] -> each option's dequantization time, as a fraction of the
    # unquantized step (so a recipe's slowdown is 1 + their sum; F32 tensors are used as they are)
    step_shares: list[list[float]] | None = None

    def slowdown(self, chosen: Sequence[int]) -> float | None:
        if self.step_shares is None:
            return None
        return 1.0 + math.fsum(self.step_shares[b][i] for b, i in enumerate(chosen))

    def byte_range(self) -> tuple[int, int]:
        """Data bytes of the smallest and of the cheapest-cost allocation."""
        small = sum(min(b for _, b, _ in opts) for opts in self.options)
        best = sum(min(opts, key=lambda o: (o[2], o[1]))[1] for opts in self.options)
        return self.fixed_bytes + small, self.fixed_bytes + best


def block_options(model: Model, shapes: Mapping[str, Sequence[int]], costs: Sequence[Mapping[str, float]],
                  allowed: Sequence[str] | None = None, speed: SpeedProfile | None = None) -> BlockOptions:
    """Options per block from the costs (one mapping type -> cost per block) and the model's shapes;
    with ``speed``, each option's share of the unquantized step spent dequantizing it."""
    if len(costs) != model.n_blocks:
        raise TargetError(f"the costs cover {len(costs)} blocks, the model has {model.n_blocks}")
    types = sorted({t for c in costs for t in c})
    if allowed is not None:
        if unknown := [t for t in allowed if t not in types]:
            raise TargetError(f"no costs for allowed type(s) {unknown}; the costs have {types}")
        types = [t for t in types if t in allowed]
    # bytes of every block under every type, by the same rules the writer's plan follows
    plan = plan_tensors(model, shapes, Recipe.uniform(model, "F32"))
    fixed = sum(p.nbytes for p in plan if not p.decided)
    block_bytes = {t: [0] * model.n_blocks for t in types}
    block_seconds = {t: [0.0] * model.n_blocks for t in types}
    for p in plan:
        if p.decided:
            for t in types:
                qtype = tensor_type(t, p.shape)
                block_bytes[t][p.block] += replace(p, qtype=qtype).nbytes
                if speed is not None:
                    block_seconds[t][p.block] += speed.dequant(p.shape, qtype)
    options, shares = [], []
    step = speed.step_seconds(model) if speed is not None else 1.0
    for b in range(model.n_blocks):
        present = [t for t in types if t in costs[b]]
        if not present:
            raise TargetError(f"block {b} ({model.block_name(b)}) has no cost for any allowed type")
        options.append([(t, block_bytes[t][b], costs[b][t]) for t in present])
        shares.append([block_seconds[t][b] / step for t in present])
    return BlockOptions(options, fixed, sum(p.numel for p in plan), shares if speed is not None else None)


def solve(options: Sequence[Sequence[tuple[str, int, float]]], budget: int) -> tuple[list[int], float] | None:
    """Exact multiple-choice knapsack: one option per group, total bytes <= budget, min cost.

    Returns the chosen option index per group and the cost, or None if nothing fits.
    """
    unit = reduce(math.gcd, (b for opts in options for _, b, _ in opts))
    weights = [np.array([b // unit for _, b, _ in opts]) for opts in options]
    # Beyond what the least-cost option of every group takes together, more budget changes nothing:
    # the table stops there, so a target far above the largest file is answered at once.
    unconstrained = sum(int(w[min(range(len(opts)), key=lambda i: (opts[i][2], opts[i][1]))])
                        for opts, w in zip(options, weights))
    cap = min(budget // unit, unconstrained)
    if cap < sum(int(w.min()) for w in weights):
        return None
    # best[c]: least cost of the groups so far within c units; 'at most c' makes it monotone
    best = np.zeros(cap + 1)
    choices = []
    for opts, w in zip(options, weights):
        new = np.full(cap + 1, np.inf)
        pick = np.zeros(cap + 1, dtype=np.int16)
        for i, (_, _, cost) in enumerate(opts):
            k = int(w[i])
            if k > cap:
                continue
            cand = best[: cap + 1 - k] + cost
            better = cand < new[k:]
            np.copyto(new[k:], cand, where=better)
            np.copyto(pick[k:], i, where=better)
        best = new
        choices.append(pick)
    if not math.isfinite(best[cap]):
        return None
    chosen = [0] * len(options)
    c = cap
    for g in range(len(options) - 1, -1, -1):
        chosen[g] = int(choices[g][c])
        c -= int(weights[g][chosen[g]])
    return chosen, float(best[cap])


def solve_two_budgets(options: Sequence[Sequence[tuple[str, int, float]]], shares: Sequence[Sequence[float]],
                      budget: int, share_budget: float, minimize: str = "cost") -> tuple[list[int], float] | None:
    """One option per group, total bytes <= ``budget`` and total share <= ``share_budget``, least
    total cost (or bytes, with ``minimize="bytes"``). None if nothing meets both.

    HiGHS proves its optimum to within its tolerances: 1e-6 absolute on the objective, and a
    row may be overshot by its feasibility tolerance. So each answer is checked here in exact
    arithmetic (integer bytes, ``math.fsum`` shares); one that overshoots is cut off (a row
    forbidding exactly that choice) and the program solved again, which keeps every truly
    feasible choice in play.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    unit = reduce(math.gcd, (b for opts in options for _, b, _ in opts))
    sizes = np.array([b // unit for opts in options for _, b, _ in opts], dtype=float)
    flat_shares = np.array([s for group in shares for s in group])
    objective = np.array([c for opts in options for _, _, c in opts]) if minimize == "cost" else sizes
    starts = np.cumsum([0] + [len(opts) for opts in options])
    one_each = np.zeros((len(options), len(sizes)))
    for g in range(len(options)):
        one_each[g, starts[g]:starts[g + 1]] = 1
    rows, upper = [sizes, flat_shares], [budget // unit, share_budget]
    for _ in range(20):
        res = milp(objective, integrality=np.ones(len(sizes)), bounds=Bounds(0, 1),
                   constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(np.vstack(rows), -np.inf, upper)],
                   options={"mip_rel_gap": 0.0})
        if res.status == 2:  # infeasible
            return None
        if res.x is None:
            raise TargetError(f"the optimizer stopped without an answer: {res.message}")
        chosen = [int(np.argmax(res.x[starts[g]:starts[g + 1]])) for g in range(len(options))]
        if math.fsum(shares[g][i] for g, i in enumerate(chosen)) <= share_budget:
            assert sum(options[g][i][1] for g, i in enumerate(chosen)) <= budget
            total = math.fsum(options[g][i][2] if minimize == "cost" else options[g][i][1]
                              for g, i in enumerate(chosen))
            return chosen, total
        cut = np.zeros(len(sizes))
        cut[[starts[g] + i for g, i in enumerate(chosen)]] = 1
        rows.append(cut)
        upper.append(len(options) - 1)
    raise TargetError("the optimizer could not meet the slowdown budget exactly; give a slightly larger one")


def _out_of_reach(blocks: BlockOptions, target: Target) -> TargetError:
    lo, hi = blocks.byte_range()
    return TargetError(
        f"{target.describe()} is out of reach: the allowed types span "
        f"{8 * lo / blocks.total_params:.3f}-{8 * hi / blocks.total_params:.3f} bits per parameter "
        f"({(lo + HEADER_RESERVE) / GiB:.2f}-{(hi + HEADER_RESERVE) / GiB:.2f} GiB)")


def least_slowdown(blocks: BlockOptions, budget: int) -> float:
    """The least slowdown any allocation within ``budget`` data bytes reaches (exact: the size
    knapsack with dequantization time as the cost)."""
    timed = [[(t, b, s) for (t, b, _), s in zip(opts, shares)]
             for opts, shares in zip(blocks.options, blocks.step_shares)]
    result = solve(timed, budget - blocks.fixed_bytes)
    if result is None:
        raise ValueError("no allocation fits the budget")
    return blocks.slowdown(result[0])


def _both_out_of_reach(blocks: BlockOptions, target: Target, budget: int, max_slowdown: float) -> TargetError:
    """Size and slowdown cannot both be met: the reachable range of each at the other's bound."""
    fastest = least_slowdown(blocks, budget)
    smallest = solve_two_budgets(blocks.options, blocks.step_shares, 2**62, max_slowdown - 1.0, minimize="bytes")
    if smallest is None:
        least = 1.0 + sum(min(s) for s in blocks.step_shares)
        at_slowdown = f"no allocation is that fast (the fastest allowed types give {least:.3f})"
    else:
        size = blocks.fixed_bytes + sum(blocks.options[g][i][1] for g, i in enumerate(smallest[0]))
        at_slowdown = (f"within {max_slowdown:g}x the smallest file is {8 * size / blocks.total_params:.3f} bits "
                       f"per parameter ({(size + HEADER_RESERVE) / GiB:.2f} GiB)")
    return TargetError(f"{target.describe()} and a slowdown of at most {max_slowdown:g}x cannot both be met: "
                       f"at that size the least slowdown is {fastest:.3f}x; {at_slowdown}")


def optimize(model: Model, shapes: Mapping[str, Sequence[int]], costs: Sequence[Mapping[str, float]],
             target: Target, allowed: Sequence[str] | None = None, name: str = "",
             speed: SpeedProfile | None = None, max_slowdown: float | None = None) -> Allocation:
    """The minimum-cost recipe that meets ``target`` and, given, a predicted step time of at most
    ``max_slowdown`` times the unquantized model's on ``speed``'s device; TargetError naming the
    reachable ranges if none does."""
    if max_slowdown is not None:
        if speed is None:
            raise TargetError("a slowdown budget needs a speed profile ('python -m quant speed')")
        if not (math.isfinite(max_slowdown) and max_slowdown >= 1.0):
            raise TargetError(f"the slowdown budget is a step-time ratio of at least 1, got {max_slowdown!r}")
    blocks = block_options(model, shapes, costs, allowed, speed)
    budget = target.data_budget(blocks.total_params)
    result = solve(blocks.options, budget - blocks.fixed_bytes)
    if result is None:
        raise _out_of_reach(blocks, target)
    if max_slowdown is not None and blocks.slowdown(result[0]) > max_slowdown:
        result = solve_two_budgets(blocks.options, blocks.step_shares, budget - blocks.fixed_bytes,
                                   max_slowdown - 1.0)
        if result is None:
            raise _both_out_of_reach(blocks, target, budget, max_slowdown)
    return _allocation(model, blocks, result, target, name, max_slowdown)


def _allocation(model: Model, blocks: BlockOptions, result: tuple[list[int], float], target: Target, name: str,
                max_slowdown: float | None) -> Allocation:
    chosen, cost = result
    types = tuple(blocks.options[b][i][0] for b, i in enumerate(chosen))
    data = blocks.fixed_bytes + sum(blocks.options[b][i][1] for b, i in enumerate(chosen))
    bpw = 8 * data / blocks.total_params
    slowdown = blocks.slowdown(chosen)
    notes = {"predicted_cost": round(cost, 6), "target": target.describe(), "bpw": round(bpw, 4)}
    if slowdown is not None:
        notes["predicted_slowdown"] = round(slowdown, 4)
    if max_slowdown is not None:
        notes["max_slowdown"] = max_slowdown
    recipe = Recipe.for_model(model, types, name=name or f"mx{bpw:.2f}", notes=notes)
    return Allocation(recipe, cost, bpw, data, slowdown)


def pareto(model: Model, shapes: Mapping[str, Sequence[int]], costs: Sequence[Mapping[str, float]],
           target: Target, speed: SpeedProfile, allowed: Sequence[str] | None = None,
           points: int = 10) -> list[Allocation]:
    """For one size target, the least-cost allocation at ``points`` slowdown budgets spread evenly
    from the least reachable slowdown to that of the unbudgeted optimum (repeats dropped), fastest first."""
    blocks = block_options(model, shapes, costs, allowed, speed)
    budget = target.data_budget(blocks.total_params)
    free = solve(blocks.options, budget - blocks.fixed_bytes)
    if free is None:
        raise _out_of_reach(blocks, target)
    slowest, fastest = blocks.slowdown(free[0]), least_slowdown(blocks, budget)
    fastest *= 1 + 1e-12  # the knapsack's own float sum of the same shares may differ in the last bit
    out: list[Allocation] = []
    n = max(points, 2)
    for k in range(n):
        bound = fastest + (slowest - fastest) * k / (n - 1)
        result = free if k == n - 1 else solve_two_budgets(
            blocks.options, blocks.step_shares, budget - blocks.fixed_bytes, bound - 1.0)
        if result is not None and not (out and out[-1].types == tuple(blocks.options[b][i][0]
                                                                       for b, i in enumerate(result[0]))):
            out.append(_allocation(model, blocks, result, target, "", bound))
    return out
