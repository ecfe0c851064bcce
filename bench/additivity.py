"""Do summed per-block costs predict a whole mixed model's error? And does the optimizer's
recipe beat uniform types on the *measured* error?

    python bench/additivity.py [--model narrow|stock] [--samples 2] [--types ...]

Measures costs with the sweep on synthetic samples, then for a set of recipes (the exact
optimizer's at several sizes, every uniform type, random mixes) quantizes all blocks at
once and measures the final-state MSE on the same samples. Prints predicted vs measured,
their Spearman rank correlation, and each uniform type beside the optimizer's recipe at
no more than its size, both measured.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quant.checkpoint import state_dict_source  # noqa: E402
from quant.models import detect  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.models.flux1_blocks import ReferenceStack  # noqa: E402
from quant.optimize import Target, TargetError, optimize  # noqa: E402
from quant.recipe import Recipe  # noqa: E402
from quant.tensor_plan import average_bpw, plan_tensors  # noqa: E402
from quant.sweep import quantized_weights, sweep  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402

MODELS = {"narrow": Flux1.model(depth_double=19, depth_single=38),
          "stock": Flux1.model("flux1-stock", depth_double=1, depth_single=2)}


@torch.no_grad()
def measured_mse(stack: ReferenceStack, samples: list, types: tuple[str, ...]) -> float:
    """Final-state MSE with every block quantized per ``types``, averaged over samples."""
    originals = [dict(stack.weights(b)) for b in range(stack.n_blocks)]

    def run(inputs) -> torch.Tensor:
        state = stack.start(inputs)
        for b in range(stack.n_blocks):
            state = stack.forward(b, state, inputs)
        return stack.output(state)

    clean = [run(x) for x in samples]
    try:
        for b, t in enumerate(types):
            stack.weights(b).update(quantized_weights(stack.weights(b), t))
        return sum(float(((run(x) - c) ** 2).mean()) for x, c in zip(samples, clean)) / len(samples)
    finally:
        for b in range(stack.n_blocks):
            stack.weights(b).update(originals[b])


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="narrow")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q6_K", "Q5_K", "Q4_K", "IQ4_XS", "Q3_K", "Q2_K"])
    ap.add_argument("--resolution", type=int, default=128)
    a = ap.parse_args()
    sd = random_state_dict(MODELS[a.model], seed=11)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    model = detect(shapes)
    stack = ReferenceStack(model, state_dict_source(sd, a.model))
    samples = [stack.make_inputs(seed, a.resolution, a.resolution, sigma=0.3 + 0.4 * seed / a.samples)
               for seed in range(a.samples)]
    costs = sweep(stack, samples, a.types).table({"model": a.model}, model.n_blocks, a.types).costs()
    recipes: dict[str, tuple[str, ...]] = {f"uniform {t}": (t,) * model.n_blocks for t in a.types}
    def bpw_of(types: tuple[str, ...]) -> float:
        return average_bpw(plan_tensors(model, shapes, Recipe.for_model(model, types)))

    # the optimizer at each uniform type's own size (the fair comparison), and on a grid
    targets = {f"optimizer @{t}": bpw_of(recipes[f"uniform {t}"]) for t in a.types}
    targets.update({f"optimizer {b}": b for b in (3.5, 4.5, 5.5)})
    for name, bpw in targets.items():
        try:
            recipes[name] = optimize(model, shapes, costs, Target(bpw=bpw)).types
        except TargetError:
            pass
    rng = random.Random(0)
    for i in range(4):
        recipes[f"random {i}"] = tuple(rng.choice(a.types) for _ in range(model.n_blocks))
    rows = []
    for name, types in recipes.items():
        predicted = sum(costs[b][t] for b, t in enumerate(types))
        bpw = bpw_of(types)
        rows.append((name, bpw, predicted, measured_mse(stack, samples, types)))
        print(f"{name:16} {bpw:6.3f} bpw  predicted {predicted:10.4g}  measured {rows[-1][3]:10.4g}", flush=True)
    print(f"Spearman rank correlation, predicted vs measured, {len(rows)} recipes: "
          f"{spearman([r[2] for r in rows], [r[3] for r in rows]):.3f}")
    measured = {name: (bpw, mse) for name, bpw, _, mse in rows}
    for t in a.types:
        if f"optimizer @{t}" not in measured:
            continue
        (ub, um), (ob, om) = measured[f"uniform {t}"], measured[f"optimizer @{t}"]
        print(f"uniform {t:6} {ub:.3f} bpw measured {um:.4g} | optimizer at <= that size {ob:.3f} bpw "
              f"measured {om:.4g} -> {'mixed wins' if om < um else 'equal' if om == um else 'UNIFORM WINS'}")


if __name__ == "__main__":
    main()
