from __future__ import annotations

import itertools
import math
import random
import tracemalloc
from pathlib import Path

import pytest

from flux_models import FLUX1_DEV as FLUX1_DEV_MODEL
from quant.models import detect
from quant.costs import resolve_costs
from quant.optimize import Target, TargetError, optimize, pareto, solve, solve_two_budgets
from quant.recipe import load_recipe
from quant.tensor_plan import average_bpw, plan_tensors
from quant.speed import SpeedProfile, shape_key, weight_shapes

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FLUX1_DEV = FLUX1_DEV_MODEL.shapes()


def brute_force(options, budget):
    best = None
    for combo in itertools.product(*[range(len(o)) for o in options]):
        size = sum(options[g][i][1] for g, i in enumerate(combo))
        cost = sum(options[g][i][2] for g, i in enumerate(combo))
        if size <= budget and (best is None or cost < best[1] - 1e-12):
            best = (list(combo), cost)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_solve_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    unit = rng.choice([1, 3, 64])
    options = [[(f"t{i}", unit * rng.randint(1, 12), rng.uniform(0, 10)) for i in range(rng.randint(1, 4))]
               for _ in range(rng.randint(1, 6))]
    lo = sum(min(b for _, b, _ in o) for o in options)
    hi = sum(max(b for _, b, _ in o) for o in options)
    for budget in {lo - 1, lo, (lo + hi) // 2, hi, hi + 5, rng.randint(lo, hi)}:
        got, want = solve(options, budget), brute_force(options, budget)
        if want is None:
            assert got is None
            continue
        assert got is not None and got[1] == pytest.approx(want[1], abs=1e-9)
        assert sum(options[g][i][1] for g, i in enumerate(got[0])) <= budget
        assert sum(options[g][i][2] for g, i in enumerate(got[0])) == pytest.approx(got[1])


def test_flux1_dev_builtin_targets() -> None:
    arch = detect(FLUX1_DEV)
    costs = resolve_costs("builtin:flux1-dev").costs()
    previous = None
    for bpw in (3.5, 5.15, 6.85, 8.0):
        a = optimize(arch, FLUX1_DEV, costs, Target(bpw=bpw))
        plan = plan_tensors(arch, FLUX1_DEV, a.recipe)
        assert a.bpw == pytest.approx(average_bpw(plan)) and a.bpw <= bpw
        if previous is not None:
            assert a.predicted_cost <= previous
        previous = a.predicted_cost
    # every type and an exact allocator beat mixed-gguf-converter's native-type recipes (938 and 1616
    # predicted at 6.85 and 5.15 bpw of block weights), and the native types alone under the same allocator
    native = ["Q8_0", "Q5_1", "Q4_1"]
    for bpw, published, gain in ((6.85, 938, 0.05), (5.2, 1616, 0.15)):
        best = optimize(arch, FLUX1_DEV, costs, Target(bpw=bpw)).predicted_cost
        assert best < published
        assert best < (1 - gain) * optimize(arch, FLUX1_DEV, costs, Target(bpw=bpw), allowed=native).predicted_cost


def test_allowed_types_and_out_of_reach() -> None:
    arch = detect(FLUX1_DEV)
    costs = resolve_costs("builtin:flux1-dev").costs()
    a = optimize(arch, FLUX1_DEV, costs, Target(bpw=6.0), allowed=["Q8_0", "Q4_K"])
    assert set(a.types) <= {"Q8_0", "Q4_K"}
    with pytest.raises(TargetError, match=r"out of reach: the allowed types span 2\.7\d*-16\.0\d* bits"):
        optimize(arch, FLUX1_DEV, costs, Target(bpw=2.0))
    with pytest.raises(TargetError, match="no costs for allowed type"):
        optimize(arch, FLUX1_DEV, costs, Target(bpw=6.0), allowed=["IQ4_XS"])
    with pytest.raises(TargetError, match="exactly one target"):
        Target(bpw=6.0, card_gib=12)
    with pytest.raises(TargetError, match="positive"):
        Target(bpw=float("nan"))


def test_size_and_card_targets() -> None:
    arch = detect(FLUX1_DEV)
    costs = resolve_costs("builtin:flux1-dev").costs()
    a = optimize(arch, FLUX1_DEV, costs, Target(size_bytes=8 * 2**30))
    assert a.data_bytes <= 8 * 2**30 - 2**20
    card = optimize(arch, FLUX1_DEV, costs, Target(card_gib=12))
    assert card.data_bytes <= 10 * 2**30 - 2**20


@pytest.mark.parametrize("target", [Target.of(size_gb=1000), Target.of(size_gb=1e6), Target.of(bpw=1e9),
                                    Target.of(card_gb=1e308)], ids=["1000 GB", "1e6 GB", "1e9 bpw", "1e308 GB card"])
def test_target_beyond_the_largest_file(target: Target) -> None:
    """The least-cost allocation at once, in a table no larger than that allocation needs (a target's
    size once set the table's: 1.2 GB at 1000 GB, a numpy allocation error beyond)."""
    arch = detect(FLUX1_DEV)
    costs = resolve_costs("builtin:flux1-dev").costs()
    tracemalloc.start()
    try:
        a = optimize(arch, FLUX1_DEV, costs, target)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert a.predicted_cost == sum(min(c.values()) for c in costs)
    assert peak < 64 * 2**20


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_target_not_a_positive_number(value: float) -> None:
    for target in ("bpw", "size_gb", "card_gb"):
        with pytest.raises(TargetError, match="positive number"):
            Target.of(**{target: value})


@pytest.mark.parametrize("path", sorted(RECIPES.glob("flux1-dev_mx*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_are_the_optimizers(path) -> None:
    """recipes/ holds what the optimizer makes from the built-in table today (not stale copies)."""
    recipe = load_recipe(path)
    target = float(path.stem.split("_mx")[1].replace("_", "."))
    arch = detect(FLUX1_DEV)
    best = optimize(arch, FLUX1_DEV, resolve_costs("builtin:flux1-dev").costs(), Target(bpw=target))
    assert recipe.types == best.types
    assert average_bpw(plan_tensors(arch, FLUX1_DEV, recipe)) <= target


def test_targets_as_users_give_them() -> None:
    assert Target.of(size_gb=9.5) == Target(size_bytes=9_500_000_000)
    assert Target.of(card_gb=12) == Target(card_gib=12)
    assert Target.of(bpw=6.9) == Target(bpw=6.9)


def brute_force_two(options, shares, budget, share_budget, minimize="cost"):
    best = None
    for combo in itertools.product(*[range(len(o)) for o in options]):
        size = sum(options[g][i][1] for g, i in enumerate(combo))
        share = sum(shares[g][i] for g, i in enumerate(combo))
        value = sum(options[g][i][2] for g, i in enumerate(combo)) if minimize == "cost" else size
        if size <= budget and share <= share_budget and (best is None or value < best[1] - 1e-12):
            best = (list(combo), value)
    return best


@pytest.mark.parametrize("seed", range(30))
def test_two_budgets_match_brute_force(seed: int) -> None:
    rng = random.Random(1000 + seed)
    unit = rng.choice([1, 3, 64])
    options = [[(f"t{i}", unit * rng.randint(1, 12), rng.uniform(0, 10)) for i in range(rng.randint(1, 4))]
               for _ in range(rng.randint(1, 6))]
    shares = [[rng.uniform(0, 0.2) for _ in opts] for opts in options]
    lo = sum(min(b for _, b, _ in o) for o in options)
    hi = sum(max(b for _, b, _ in o) for o in options)
    s_lo, s_hi = sum(map(min, shares)), sum(map(max, shares))
    for budget in (lo, (lo + hi) // 2, hi + 5, rng.randint(lo, hi)):
        for share_budget in (s_lo - 0.01, (s_lo + s_hi) / 2, s_hi, rng.uniform(s_lo, s_hi)):
            for minimize in ("cost", "bytes"):
                got = solve_two_budgets(options, shares, budget, share_budget, minimize)
                want = brute_force_two(options, shares, budget, share_budget, minimize)
                if want is None:
                    assert got is None
                    continue
                assert got is not None and got[1] == pytest.approx(want[1], abs=1e-6)
                assert sum(options[g][i][1] for g, i in enumerate(got[0])) <= budget
                assert math.fsum(shares[g][i] for g, i in enumerate(got[0])) <= share_budget


def linear_profile(shapes, seconds_per_param: dict[str, float]) -> SpeedProfile:
    """A profile whose dequantization time is proportional to the weight's size, per type."""
    arch = detect(shapes)
    weights = weight_shapes(arch, shapes)
    return SpeedProfile("test", 4608, "test", "bfloat16", {"double": 1.0, "single": 0.5},
                        {shape_key(s): {t: math.prod(s) * v for t, v in seconds_per_param.items()} for s in weights},
                        {shape_key(s): 0.0 for s in weights})


# the H200 ratios to a bf16 matmul: dequantization time per weight, relative
H200_RATIOS = {"Q8_0": 0.39, "Q4_0": 0.95, "Q4_1": 0.95, "Q4_K": 1.13, "Q2_K": 1.20, "IQ4_NL": 1.28,
               "Q6_K": 1.51, "Q5_K": 1.67, "Q5_0": 1.73, "Q5_1": 1.76, "IQ4_XS": 1.92, "Q3_K": 2.35,
               "BF16": 0.2, "F16": 0.2}


def test_slowdown_budget_on_flux1_dev() -> None:
    arch = detect(FLUX1_DEV)
    costs = resolve_costs("builtin:flux1-dev").costs()
    speed = linear_profile(FLUX1_DEV, {t: r * 1e-9 for t, r in H200_RATIOS.items()})
    free = optimize(arch, FLUX1_DEV, costs, Target(bpw=6.9))
    timed = optimize(arch, FLUX1_DEV, costs, Target(bpw=6.9), speed=speed)
    assert timed.types == free.types and timed.predicted_cost == free.predicted_cost  # a profile alone changes nothing
    assert timed.predicted_slowdown == pytest.approx(speed.slowdown(arch, plan_tensors(arch, FLUX1_DEV, free.recipe)))
    loose = optimize(arch, FLUX1_DEV, costs, Target(bpw=6.9), speed=speed, max_slowdown=timed.predicted_slowdown)
    assert loose.types == free.types
    bound = 1 + 0.8 * (timed.predicted_slowdown - 1)
    fast = optimize(arch, FLUX1_DEV, costs, Target(bpw=6.9), speed=speed, max_slowdown=bound)
    assert fast.predicted_slowdown <= bound and fast.bpw <= 6.9
    assert fast.predicted_cost > free.predicted_cost
    assert fast.recipe.notes["predicted_slowdown"] == round(fast.predicted_slowdown, 4)
    frontier = pareto(arch, FLUX1_DEV, costs, Target(bpw=6.9), speed, points=4)
    assert frontier[-1].types == free.types and len(frontier) >= 3
    for a, b in zip(frontier, frontier[1:]):  # faster costs more
        assert a.predicted_slowdown < b.predicted_slowdown and a.predicted_cost > b.predicted_cost


def test_slowdown_out_of_reach_names_both_ranges() -> None:
    arch = detect(FLUX1_DEV)
    costs = resolve_costs("builtin:flux1-dev").costs()
    speed = linear_profile(FLUX1_DEV, {t: r * 1e-9 for t, r in H200_RATIOS.items()})
    with pytest.raises(TargetError, match=r"cannot both be met: at that size the least slowdown is 1\.\d+x; "
                                          r"within 1\.2x the smallest file is \d+\.\d+ bits per parameter"):
        optimize(arch, FLUX1_DEV, costs, Target(bpw=4.0), speed=speed, max_slowdown=1.2)
    with pytest.raises(TargetError, match="no allocation is that fast"):
        optimize(arch, FLUX1_DEV, costs, Target(bpw=16.0), speed=speed, max_slowdown=1.0)
    with pytest.raises(TargetError, match="needs a speed profile"):
        optimize(arch, FLUX1_DEV, costs, Target(bpw=6.9), max_slowdown=1.3)
    with pytest.raises(TargetError, match="at least 1"):
        optimize(arch, FLUX1_DEV, costs, Target(bpw=6.9), speed=speed, max_slowdown=0.5)


def test_two_budgets_recheck_an_overshooting_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """HiGHS may overshoot a row by its feasibility tolerance: the answer is checked exactly, cut
    off, and the program solved again. Here every first answer comes from a 5 % looser share row."""
    import scipy.optimize

    real, calls = scipy.optimize.milp, []

    def loose_first(c, *, constraints, **kw):
        calls.append(len(calls))
        if len(calls) == 1:
            rows = constraints[1]
            constraints = [constraints[0], scipy.optimize.LinearConstraint(rows.A, rows.lb, rows.ub * [1, 1.05])]
        return real(c, constraints=constraints, **kw)

    monkeypatch.setattr(scipy.optimize, "milp", loose_first)
    retried = 0
    for seed in range(30):
        rng = random.Random(1000 + seed)
        options = [[(f"t{i}", rng.randint(1, 12), rng.uniform(0, 10)) for i in range(4)] for _ in range(5)]
        shares = [[rng.uniform(0, 0.2) for _ in opts] for opts in options]
        share_budget = sum(map(min, shares)) + 0.05
        calls.clear()
        got = solve_two_budgets(options, shares, 60, share_budget)
        want = brute_force_two(options, shares, 60, share_budget)
        retried += len(calls) > 1
        assert (got is None) == (want is None)
        if want is not None:
            assert got[1] == pytest.approx(want[1], abs=1e-6)
    assert retried >= 3
