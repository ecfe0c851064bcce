"""The exact allocator against a greedy one and against uniform types, on FLUX.1-dev's costs.

    python bench/allocator.py [--costs builtin:flux1-dev] [--from 3.0 --to 10.0 --step 0.1]

For each target bits per parameter: the exact (knapsack) optimizer's predicted cost, a
greedy marginal-ratio allocator's (start every block at its smallest type, repeatedly take
the upgrade with the best cost saved per byte that still fits), and the best uniform type
of no larger size; with the exact solve time per target (target < 50 ms).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quant.costs import resolve_costs  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.optimize import BlockOptions, Target, TargetError, block_options, optimize  # noqa: E402


def greedy(blocks: BlockOptions, budget: int) -> float | None:
    """Marginal-ratio greedy: the allocator mixed-gguf-converter's schedule approximates."""
    choice = [min(range(len(o)), key=lambda i: (o[i][1], o[i][2])) for o in blocks.options]
    used = blocks.fixed_bytes + sum(blocks.options[b][i][1] for b, i in enumerate(choice))
    if used > budget:
        return None
    while True:
        best = None
        for b, opts in enumerate(blocks.options):
            _, size0, cost0 = opts[choice[b]]
            for i, (_, size, cost) in enumerate(opts):
                extra, saved = size - size0, cost0 - cost
                if saved > 0 and used + extra <= budget:
                    ratio = saved / extra if extra > 0 else float("inf")
                    if best is None or ratio > best[0]:
                        best = (ratio, b, i, extra)
        if best is None:
            return sum(blocks.options[b][i][2] for b, i in enumerate(choice))
        _, b, i, extra = best
        choice[b], used = i, used + extra


def best_uniform(blocks: BlockOptions, budget: int) -> tuple[str, float] | None:
    fits = []
    for t in {t for opts in blocks.options for t, _, _ in opts}:
        picks = [next((o for o in opts if o[0] == t), None) for opts in blocks.options]
        if all(picks) and blocks.fixed_bytes + sum(p[1] for p in picks) <= budget:
            fits.append((sum(p[2] for p in picks), t))
    return (min(fits)[1], min(fits)[0]) if fits else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--costs", default="builtin:flux1-dev")
    ap.add_argument("--from", dest="lo", type=float, default=3.0)
    ap.add_argument("--to", dest="hi", type=float, default=10.0)
    ap.add_argument("--step", type=float, default=0.1)
    a = ap.parse_args()
    model = Flux1.model("flux1-dev")
    shapes = model.shapes()
    costs = resolve_costs(a.costs).costs()
    blocks = block_options(model, shapes, costs)
    print(f"{'target':>6} {'exact bpw':>9} {'exact':>9} {'greedy':>9} {'greedy/exact':>12} "
          f"{'uniform':>16} {'uniform/exact':>13} {'solve ms':>8}")
    times = []
    optimize(model, shapes, costs, Target(bpw=a.hi))  # warm-up: first-call costs are not the solver's
    steps = round((a.hi - a.lo) / a.step) + 1
    for k in range(steps):
        bpw = round(a.lo + k * a.step, 6)
        budget = Target(bpw=bpw).data_budget(blocks.total_params)
        t = time.perf_counter()
        try:
            alloc = optimize(model, shapes, costs, Target(bpw=bpw))
        except TargetError:
            print(f"{bpw:6.2f} {'out of reach':>9}")
            continue
        ms = (time.perf_counter() - t) * 1e3
        times.append(ms)
        g = greedy(blocks, budget)
        u = best_uniform(blocks, budget)
        u_text = f"{u[0]:>6} {u[1]:9.1f}" if u else f"{'none fits':>16}"
        u_ratio = f"{u[1] / alloc.predicted_cost:13.3f}" if u else f"{'':>13}"
        print(f"{bpw:6.2f} {alloc.bpw:9.3f} {alloc.predicted_cost:9.1f} {g:9.1f} {g / alloc.predicted_cost:12.3f} "
              f"{u_text} {u_ratio} {ms:8.1f}")
    times.sort()
    print(f"solve time per target: median {times[len(times) // 2]:.1f} ms, max {times[-1]:.1f} ms (target < 50 ms)")


if __name__ == "__main__":
    main()
