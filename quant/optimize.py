"""The exact allocator: a type per block, minimum total cost within a size budget.

Choosing one type per block under a byte budget is a multiple-choice knapsack. Every
block's size under every type is a whole number of bytes, and all of them share a large
common divisor (the blocks are made of 256-value rows), so the knapsack is solved exactly
by dynamic programming over budget units of that divisor: for FLUX.1-dev a few tens of
thousands of units, a few milliseconds per target. It is optimal at *every* budget, not
only at the breakpoints a greedy schedule happens to visit.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import reduce

import numpy as np

from .arch import FluxArch
from .recipe import Recipe, plan_tensors, tensor_type

GiB = 2**30
GB = 10**9  # file sizes are given in decimal GB, as drives are sold; a "12 GB" card has 12 GiB
# Bytes a GGUF spends outside tensor data (header, names, metadata, alignment); a size
# target reserves this much so the file, not just its data, fits.
HEADER_RESERVE = 2**20
# "Fits an N GB card": the model may take the card's memory less this headroom, which
# covers the CUDA context, FLUX's activations at 1024x1024 and the VAE decode.
CARD_HEADROOM_GIB = 2.0


class TargetError(ValueError):
    """A target the allowed, costed types cannot meet, or a malformed one."""


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
        if not (math.isfinite(given[0]) and given[0] > 0):
            raise TargetError(f"target must be a positive number, got {given[0]!r}")

    @classmethod
    def of(cls, bpw: float | None = None, size_gb: float | None = None, card_gb: float | None = None) -> Target:
        """A target as users give it: bits per parameter, a file size in GB, or a card's GB."""
        return cls(bpw=bpw, size_bytes=None if size_gb is None else int(size_gb * GB), card_gib=card_gb)

    def data_budget(self, total_params: int) -> int:
        """Bytes available to tensor data."""
        if self.bpw is not None:
            return math.floor(self.bpw * total_params / 8)
        size = self.size_bytes if self.size_bytes is not None else math.floor((self.card_gib - CARD_HEADROOM_GIB) * GiB)
        return size - HEADER_RESERVE

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

    @property
    def types(self) -> tuple[str, ...]:
        return self.recipe.types


@dataclass(frozen=True)
class Problem:
    """Per block: the allowed, costed types with their exact bytes; plus the fixed part."""

    options: list[list[tuple[str, int, float]]]  # [block] -> (type, bytes, cost)
    fixed_bytes: int  # tensors no recipe decides (F32)
    total_params: int

    def byte_range(self) -> tuple[int, int]:
        """Data bytes of the smallest and of the cheapest-cost allocation."""
        small = sum(min(b for _, b, _ in opts) for opts in self.options)
        best = sum(min(opts, key=lambda o: (o[2], o[1]))[1] for opts in self.options)
        return self.fixed_bytes + small, self.fixed_bytes + best


def build_problem(arch: FluxArch, shapes: Mapping[str, Sequence[int]], costs: Sequence[Mapping[str, float]],
                  allowed: Sequence[str] | None = None) -> Problem:
    """Options per block from the costs (one mapping type -> cost per block) and the model's shapes."""
    if len(costs) != arch.n_blocks:
        raise TargetError(f"the costs cover {len(costs)} blocks, the model has {arch.n_blocks}")
    types = sorted({t for c in costs for t in c})
    if allowed is not None:
        if unknown := [t for t in allowed if t not in types]:
            raise TargetError(f"no costs for allowed type(s) {unknown}; the costs have {types}")
        types = [t for t in types if t in allowed]
    # bytes of every block under every type, by the same rules the writer's plan follows
    plan = plan_tensors(arch, shapes, Recipe.uniform(arch, "F32"))
    decided = [p.block is not None and arch.is_quantizable(p.key, p.shape) for p in plan]
    fixed = sum(p.nbytes for p, d in zip(plan, decided) if not d)
    block_bytes = {t: [0] * arch.n_blocks for t in types}
    for p, d in zip(plan, decided):
        if d:
            for t in types:
                block_bytes[t][p.block] += replace(p, qtype=tensor_type(t, p.shape)).nbytes
    options = []
    for b in range(arch.n_blocks):
        opts = [(t, block_bytes[t][b], costs[b][t]) for t in types if t in costs[b]]
        if not opts:
            raise TargetError(f"block {b} ({arch.block_name(b)}) has no cost for any allowed type")
        options.append(opts)
    return Problem(options, fixed, sum(p.numel for p in plan))


def solve(options: Sequence[Sequence[tuple[str, int, float]]], budget: int) -> tuple[list[int], float] | None:
    """Exact multiple-choice knapsack: one option per group, total bytes <= budget, min cost.

    Returns the chosen option index per group and the cost, or None if nothing fits.
    """
    unit = reduce(math.gcd, (b for opts in options for _, b, _ in opts))
    weights = [np.array([b // unit for _, b, _ in opts]) for opts in options]
    cap = budget // unit
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


def optimize(arch: FluxArch, shapes: Mapping[str, Sequence[int]], costs: Sequence[Mapping[str, float]],
             target: Target, allowed: Sequence[str] | None = None, name: str = "") -> Allocation:
    """The minimum-cost recipe that meets ``target``; TargetError naming the range if none does."""
    problem = build_problem(arch, shapes, costs, allowed)
    budget = target.data_budget(problem.total_params)
    result = solve(problem.options, budget - problem.fixed_bytes)
    if result is None:
        lo, hi = problem.byte_range()
        raise TargetError(
            f"{target.describe()} is out of reach: the allowed types span "
            f"{8 * lo / problem.total_params:.3f}-{8 * hi / problem.total_params:.3f} bits per parameter "
            f"({(lo + HEADER_RESERVE) / GiB:.2f}-{(hi + HEADER_RESERVE) / GiB:.2f} GiB)")
    chosen, cost = result
    types = tuple(problem.options[b][i][0] for b, i in enumerate(chosen))
    data = problem.fixed_bytes + sum(problem.options[b][i][1] for b, i in enumerate(chosen))
    bpw = 8 * data / problem.total_params
    recipe = Recipe(types, arch.depth_double, arch.depth_single, name=name or f"mx{bpw:.2f}",
                    notes={"predicted_cost": round(cost, 6), "target": target.describe(), "bpw": round(bpw, 4)})
    return Allocation(recipe, cost, bpw, data)
