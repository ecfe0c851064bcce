"""What a faster file costs: the slowdown/cost frontier at one size on the built-in FLUX.1-dev costs.

    python bench/speed_frontier.py [--bpw 6.9] [--points 10] [--profile PROFILE.json] [--write-profile OUT.json]

Without ``--profile`` the speed profile is an H200's, scaled from dequantization times measured
there with ComfyUI-GGUF's functions (one 3072x12288 weight, relative to the bf16 matmul it feeds
at 4608 tokens). Scaling assumes what holds on a GPU at these sizes: dequantizing is memory-bound
(time proportional to the weight's size) and a matmul is compute-bound (proportional to size x
tokens). A block's bf16 forward is its token-fed matmuls (modulation weights see one vector:
none) plus attention, counted at its FLOPs at half the matmuls' rate. BF16 was not measured
there; it is estimated by memory traffic against Q8_0 (a bit shift through float32: ~20 bytes
moved per weight against Q8_0's ~7): 1.1. The slowdowns depend on these assumptions; the
dequantization-time shares and costs that decide the target below do not depend on the block
times at all.

Prints the frontier (fastest first) and then the least cost at 80 % of the unbudgeted recipe's
dequantization time: the issue's target is <= 10 % more predicted cost there.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quant.costs import resolve_costs  # noqa: E402
from quant.models import Model  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.optimize import Target, optimize, pareto  # noqa: E402
from quant.speed import SpeedProfile, load_speed, save_speed, shape_key, weight_shapes  # noqa: E402

H200_DEQUANT_OVER_MATMUL = {"Q8_0": 0.39, "Q4_0": 0.95, "Q4_1": 0.95, "Q4_K": 1.13, "Q2_K": 1.20, "IQ4_NL": 1.28,
                            "Q6_K": 1.51, "Q5_K": 1.67, "Q5_0": 1.73, "Q5_1": 1.76, "IQ4_XS": 1.92, "Q3_K": 2.35,
                            "BF16": 1.1, "F16": 1.1}
REFERENCE = (3072, 12288)
TOKENS = 4608
# bf16 matmul of the reference weight at 4608 tokens: 348 GFLOP at ~700 TFLOP/s
REFERENCE_MATMUL_SECONDS = 2 * math.prod(REFERENCE) * TOKENS / 700e12
ATTENTION_RATE = 0.5  # attention's FLOP rate relative to the matmuls'


def h200_profile(model: Model, shapes: dict) -> SpeedProfile:
    per_param = REFERENCE_MATMUL_SECONDS / math.prod(REFERENCE)
    dequant, matmul = {}, {}
    for shape in weight_shapes(model, shapes):
        matmul[shape_key(shape)] = per_param * math.prod(shape)
        dequant[shape_key(shape)] = {t: r * per_param * math.prod(shape) for t, r in H200_DEQUANT_OVER_MATMUL.items()}
    attention = 4 * TOKENS**2 * model.config.hidden_size / (700e12 * ATTENTION_RATE)
    blocks = {}
    for kind, block in (("double", 0), ("single", model.config.depth_double)):
        prefix = model.prefix + model.block_name(block) + "."
        fed = [s for k, s in shapes.items() if k.startswith(prefix) and len(s) == 2 and "mod" not in k]
        blocks[kind] = sum(per_param * math.prod(s) for s in fed) + attention
    return SpeedProfile("NVIDIA H200 (scaled from the issue's table)", TOKENS, "ComfyUI-GGUF", "bfloat16",
                        blocks, dequant, matmul, {"source": "bench/speed_frontier.py"})


def mix(types) -> str:
    return ", ".join(f"{t} x{n}" for t, n in Counter(types).most_common())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bpw", type=float, default=6.9)
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--profile", help="a measured speed profile instead of the scaled H200 one")
    ap.add_argument("--write-profile", help="write the scaled H200 profile here")
    a = ap.parse_args()
    model = Flux1.model("flux1-dev")
    shapes = model.shapes()
    speed = load_speed(a.profile) if a.profile else h200_profile(model, shapes)
    if a.write_profile:
        save_speed(speed, a.write_profile)
    costs = resolve_costs("builtin:flux1-dev").costs()
    target = Target(bpw=a.bpw)
    frontier = pareto(model, shapes, costs, target, speed, points=a.points)
    free = frontier[-1]
    dequant = lambda f: f.predicted_slowdown - 1  # noqa: E731 (dequantization time, in bf16 steps)
    print(f"{target.describe()}, built-in FLUX.1-dev costs, {speed.device}, {speed.tokens} tokens")
    print(f"bf16 step {speed.step_seconds(model) * 1e3:.1f} ms (blocks); unbudgeted recipe: "
          f"slowdown {free.predicted_slowdown:.3f}, cost {free.predicted_cost:.1f}: {mix(free.types)}")
    print("| slowdown | dequant time vs unbudgeted | predicted cost | vs unbudgeted | bits/param | types |")
    print("|---|---|---|---|---|---|")
    for f in frontier:
        print(f"| {f.predicted_slowdown:.3f} | {dequant(f) / dequant(free):.0%} | {f.predicted_cost:.1f} | "
              f"{f.predicted_cost / free.predicted_cost - 1:+.1%} | {f.bpw:.3f} | {mix(f.types)} |")
    bound = 1 + 0.8 * dequant(free)
    at80 = optimize(model, shapes, costs, target, speed=speed, max_slowdown=bound)
    extra = at80.predicted_cost / free.predicted_cost - 1
    print(f"at 80 % of the dequantization time (slowdown <= {bound:.3f}): cost {at80.predicted_cost:.1f} "
          f"({extra:+.1%}), slowdown {at80.predicted_slowdown:.3f}: {mix(at80.types)}")
    print(f"target (<= +10 % cost for -20 % dequantization time): {'met' if extra <= 0.10 else 'NOT met'}")


if __name__ == "__main__":
    main()
