"""Costs estimated from the weights against costs measured on real activations: how the blocks
rank, and what the recipes each picks cost when measured whole, at equal size.

    python bench/estimate.py [--depth 2 4] [--types Q2_K Q3_K Q4_K IQ4_XS Q5_K Q6_K] [--runs 2] [--steps 6]

A random stock-width FLUX.1 (hidden 3072) is sampled in a real ComfyUI with Capture Layer Costs
(``save_inputs``, as bench/imatrix.py does): its importance matrix and one step's block inputs per
run. Headless, on those inputs and the pack's reference blocks, the sweep measures each block's
cost per type (final-state MSE with only that block quantized); ``quant.estimate`` estimates the
same from the weights alone, without and with the importance matrix. Prints, per type, the rank
correlation (Spearman) of each estimate with the measured costs across blocks; then for a few
sizes the recipe each table picks and its final-state MSE measured with every block quantized
at once, and each estimate's error over the measured table's. Random weights have no outlier
channels and every block of one kind is alike, so real FLUX weights may rank differently: this
measures the method on real activations, not FLUX.1's own sensitivities.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
import torch  # noqa: E402

from imatrix import capture, whole_model_mse  # noqa: E402
from quant.capture_file import load_capture  # noqa: E402
from quant.checkpoint import open_safetensors  # noqa: E402
from quant.estimate import estimate_costs  # noqa: E402
from quant.imatrix import load_imatrix  # noqa: E402
from quant.models import detect  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.models.flux1_blocks import ReferenceStack  # noqa: E402
from quant.optimize import Target, optimize  # noqa: E402
from quant.recipe import Recipe  # noqa: E402
from quant.sweep import sweep  # noqa: E402
from quant.tensor_plan import average_bpw, plan_tensors  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation (ties broken by order: costs are continuous)."""
    ranks = [torch.tensor(x).argsort().argsort().double() for x in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, nargs=2, default=[2, 4], metavar=("DOUBLE", "SINGLE"))
    ap.add_argument("--types", nargs="+", default=["Q2_K", "Q3_K", "Q4_K", "IQ4_XS", "Q5_K", "Q6_K"])
    ap.add_argument("--runs", type=int, default=2, help="ComfyUI sampling runs (one saved input each)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--points", type=int, default=4, help="sizes between the smallest and largest uniform type")
    a = ap.parse_args()
    stock = Flux1.model("flux1-stock", depth_double=a.depth[0], depth_single=a.depth[1])
    with tempfile.TemporaryDirectory() as base:
        ckpt, captures, imatrix_file = capture(Path(base), stock, a.runs, a.steps)
        imatrix = load_imatrix(imatrix_file)
        print(f"{stock.describe()}; {len(captures)} captured inputs; imatrix from ComfyUI: {imatrix.describe()}")
        with open_safetensors(ckpt, hash_file=False) as source:
            model = detect(source.shapes)
            stack = ReferenceStack(model, source)
            samples = [stack.prepare(load_capture(p, stack.width)[0]) for p in captures]
            with torch.no_grad():
                measured = sweep(stack, samples, a.types).table({}, model.n_blocks, a.types).costs()
            tables = {"measured": measured,
                      "estimate": estimate_costs(model, source, a.types).costs(),
                      "estimate + imatrix": estimate_costs(model, source, a.types, imatrix, "bench").costs()}
            print("| type | Spearman, estimate vs measured | estimate + imatrix vs measured |")
            print("|---|---|---|")
            for t in a.types:
                rho = [spearman([c[t] for c in tables[k]], [c[t] for c in measured])
                       for k in ("estimate", "estimate + imatrix")]
                print(f"| {t} | {rho[0]:.2f} | {rho[1]:.2f} |")
            uniform = [average_bpw(plan_tensors(model, source.shapes, Recipe.uniform(model, t))) for t in a.types]
            lo, hi = min(uniform), max(uniform)
            print("| target bpw | " + " | ".join(f"{k}: measured MSE" for k in tables) + " | estimates / measured |")
            print("|---|" + "---|" * (len(tables) + 1))
            for i in range(1, a.points + 1):
                bpw = lo + (hi - lo) * i / (a.points + 1)
                mse = {k: whole_model_mse(stack, samples, optimize(model, source.shapes, c, Target(bpw=bpw)).types,
                                          None) for k, c in tables.items()}
                ratios = " / ".join(f"{mse[k] / mse['measured']:.3f}" for k in tables if k != "measured")
                print(f"| {bpw:.2f} | " + " | ".join(f"{v:.4g}" for v in mse.values()) + f" | {ratios} |")


if __name__ == "__main__":
    main()
