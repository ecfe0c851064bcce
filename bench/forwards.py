"""Costs from bf16 block forwards against the float32 ones, on stock-width blocks, in one run.

    python bench/forwards.py [--depth 2 4] [--types Q8_0 Q6_K Q3_K] [--samples 2] [--device cpu]

FLUX samples in bf16; the headless sweep runs float32 by default. This measures both on
the same random stock-width model (hidden 3072) and the same synthetic samples, and prints
per type the rank correlation (Spearman) of the block costs, the ratio of the totals and
the mean per-block difference (bf16 rounding adds error of its own, whatever the type),
with the sweep's wall time each way; then, for a spread of targets, whether the optimizer
picks the same recipe from either table, and the float32 cost of each pick.
The sweep may run in bf16 where, for every type, Spearman >= 0.99 and the totals agree
within 5 %; where only the recipes agree, bf16 is good for choosing, not for predicting.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quant.checkpoint import state_dict_source  # noqa: E402
from quant.models import detect  # noqa: E402
from quant.models.flux1 import Flux1, FluxConfig  # noqa: E402
from quant.models.flux1_blocks import ReferenceStack  # noqa: E402
from quant.optimize import Target, optimize  # noqa: E402
from quant.recipe import Recipe  # noqa: E402
from quant.tensor_plan import average_bpw, plan_tensors  # noqa: E402
from quant.sweep import sweep  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    ranks = lambda v: torch.tensor(v).argsort().argsort().double()  # noqa: E731 (no ties in float costs)
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, nargs=2, default=[2, 4], metavar=("DOUBLE", "SINGLE"))
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q6_K", "Q3_K"])
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=3072, help="width (3072 is FLUX's; smaller only to try the script)")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    # stock width at --hidden: FLUX.1's head size (128), MLP ratio (4) and text widths
    cfg = FluxConfig.at_width(a.hidden, a.depth[0], a.depth[1])
    sd = random_state_dict(Flux1.model(cfg), seed=5, dtype=torch.bfloat16)
    model = detect({k: tuple(v.shape) for k, v in sd.items()})
    costs, seconds = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        stack = ReferenceStack(model, state_dict_source(sd, "stock"), device=a.device, dtype=dtype)
        samples = [stack.make_inputs(seed, a.resolution, a.resolution, sigma=0.2 + 0.6 * seed / max(1, a.samples - 1))
                   for seed in range(a.samples)]
        t = time.perf_counter()
        result = sweep(stack, samples, a.types)
        seconds[dtype] = time.perf_counter() - t
        costs[dtype] = {q: [result.sse[(b, q)] / result.count[(b, q)] for b in range(model.n_blocks)] for q in a.types}
        del stack
    print(f"hidden {a.hidden}, {a.depth[0]}+{a.depth[1]} blocks, {a.samples} sample(s) at {a.resolution}px, {a.device}; "
          f"sweep {seconds[torch.float32]:.1f} s float32, {seconds[torch.bfloat16]:.1f} s bf16")
    print(f"{'type':6} {'spearman':>8} {'total bf16/f32':>14} {'mean diff':>11}  per-block bf16/f32")
    for q in a.types:
        f32, b16 = costs[torch.float32][q], costs[torch.bfloat16][q]
        ratios = " ".join(f"{b / f:.3f}" for b, f in zip(b16, f32))
        floor = sum(b - f for b, f in zip(b16, f32)) / len(f32)
        print(f"{q:6} {spearman(f32, b16):8.3f} {sum(b16) / sum(f32):14.3f} {floor:11.3e}  {ratios}", flush=True)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    tables = {dtype: [{q: costs[dtype][q][b] for q in a.types} for b in range(model.n_blocks)] for dtype in costs}
    lo, hi = (average_bpw(plan_tensors(model, shapes, Recipe.uniform(model, t))) for t in (a.types[-1], a.types[0]))
    same = 0
    targets = [lo + (hi - lo) * i / 8 for i in range(1, 8)]
    for bpw in targets:
        picks = {dtype: optimize(model, shapes, tables[dtype], Target.of(bpw=bpw)) for dtype in tables}
        f32_cost = {dtype: sum(costs[torch.float32][t][b] for b, t in enumerate(p.types)) for dtype, p in picks.items()}
        agree = picks[torch.float32].types == picks[torch.bfloat16].types
        same += agree
        print(f"{bpw:.2f} bpw: {'same recipe' if agree else 'recipes differ'}; float32 cost of the float32 pick "
              f"{f32_cost[torch.float32]:.4g}, of the bf16 pick {f32_cost[torch.bfloat16]:.4g}", flush=True)
    print(f"same recipe at {same} of {len(targets)} targets")


if __name__ == "__main__":
    main()
