"""What an importance matrix buys: final-state error per type with and without one, and mixed
recipes at equal size, on a stock-width model with inputs captured in a real ComfyUI run.

    python bench/imatrix.py [--depth 1 1] [--types Q2_K Q3_K Q4_K Q4_0 IQ4_XS] [--runs 2] [--steps 6]

A random stock-width FLUX (hidden 3072) is sampled in a real ComfyUI with Capture Layer Costs
(``save_inputs``): every step of every run goes into the importance matrix, and one step per
run is saved as the stack's inputs. Each capture run follows the same run without Capture:
their step times (ComfyUI's progress messages; the sweep comes after the last step) give the
overhead of collecting the importance matrix. Headless, on those inputs and the pack's reference blocks,
the sweep then measures each block's cost per type with and without the imatrix (final-state
MSE with only that block quantized), and for a few sizes the optimizer picks a recipe from
each table; each recipe is quantized whole (every block at once, with or without the imatrix,
as its table was measured) and its final-state MSE measured. Prints the per-type totals and
their ratio, and the recipes' measured errors. Random weights have no outlier channels, so
the gain on real FLUX weights may differ: this measures the machinery on real activations.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from comfyui_rig import ComfyServer, find_comfyui, loader, sampling, step_seconds  # noqa: E402
from quant.checkpoint import open_safetensors  # noqa: E402
from quant.capture_file import load_capture  # noqa: E402
from quant.imatrix import Imatrix, load_imatrix  # noqa: E402
from quant.models import Model, detect  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.models.flux1_blocks import ReferenceStack  # noqa: E402
from quant.optimize import Target, optimize  # noqa: E402
from quant.recipe import Recipe  # noqa: E402
from quant.tensor_plan import average_bpw, plan_tensors  # noqa: E402
from quant.sweep import quantized_weights, sweep  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402


def capture(folder: Path, stock: Model, runs: int, steps: int) -> tuple[Path, list[Path], Path]:
    """Sample in a real ComfyUI with Capture: -> (checkpoint, saved inputs, imatrix file)."""
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"bench/imatrix.py needs ComfyUI: {found}")
    server = ComfyServer(*found, folder)
    ckpt = server.models / "bench-imatrix.safetensors"
    save_file(random_state_dict(stock, seed=21), str(ckpt))
    server.start()
    plain_s, capture_s = [], []
    try:
        step_seconds(server, {"load": loader(ckpt.name), **sampling(["load", 0], 1, "bench/warm", steps=2, size=256)})
        for seed in range(runs):  # alternating: a plain run, then the same with Capture
            plain = {"load": loader(ckpt.name), **sampling(["load", 0], 100 + seed, "bench/plain", steps=steps,
                                                           size=256)}
            plain_s.append(step_seconds(server, plain))
            node = {"class_type": "MxCaptureLayerCosts", "inputs": {
                "model": ["load", 0], "costs_file": "bench", "step": -1, "samples_per_run": 1, "types": "Q8_0",
                "save_inputs": True}}
            capture_s.append(step_seconds(server, {"load": loader(ckpt.name), "capture": node, **sampling(
                ["capture", 0], 100 + seed, "bench/imatrix", steps=steps, size=256)}))
    finally:
        server.stop()
    p, c = min(plain_s), min(capture_s)
    print(f"a sampling step: plain {p:.2f} s, with Capture (its importance hooks) {c:.2f} s: {c / p - 1:+.1%}")
    costs = folder / "models" / "mxgguf_costs"
    return ckpt, sorted((costs / "bench.inputs").glob("*.safetensors")), costs / "bench.imatrix.gguf"


def whole_model_mse(stack: ReferenceStack, samples: list, types: tuple[str, ...], imatrix: Imatrix | None) -> float:
    """Final-state MSE with every block quantized as ``types`` says (then restored)."""
    clean, quantized = [], []
    with torch.no_grad():
        for inputs in samples:
            state = stack.start(inputs)
            for b in range(stack.n_blocks):
                state = stack.forward(b, state, inputs)
            clean.append(stack.output(state).float())
        originals = {}
        lookup = None if imatrix is None else imatrix.block_importance(stack.model.block_name)
        try:
            for b, qtype in enumerate(types):
                weights = stack.weights(b)
                importance = None if lookup is None else lambda name, b=b: lookup(b, name)
                for name, q in quantized_weights(weights, qtype, importance).items():
                    originals[(b, name)] = weights[name]
                    weights[name] = q
            for inputs in samples:
                state = stack.start(inputs)
                for b in range(stack.n_blocks):
                    state = stack.forward(b, state, inputs)
                quantized.append(stack.output(state).float())
        finally:
            for (b, name), w in originals.items():
                stack.weights(b)[name] = w
    sse = sum(float(((q - c) ** 2).sum()) for q, c in zip(quantized, clean))
    return sse / sum(c.numel() for c in clean)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, nargs=2, default=[1, 1], metavar=("DOUBLE", "SINGLE"))
    ap.add_argument("--types", nargs="+", default=["Q2_K", "Q3_K", "Q4_K", "Q4_0", "IQ4_XS"])
    ap.add_argument("--runs", type=int, default=2, help="ComfyUI sampling runs (one saved input each)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--bpw", type=float, nargs="+",
                    help="recipe targets (default: a third and two thirds of the way between the smallest and "
                         "largest of the types, uniform, on this model)")
    a = ap.parse_args()
    stock = Flux1.model("flux1-stock", depth_double=a.depth[0], depth_single=a.depth[1])
    with tempfile.TemporaryDirectory() as base:
        ckpt, captures, imatrix_file = capture(Path(base), stock, a.runs, a.steps)
        imatrix = load_imatrix(imatrix_file)
        print(f"stock width {stock.config.depth_double}+{stock.config.depth_single}; "
              f"imatrix from ComfyUI: {imatrix.describe()}; "
              f"{len(captures)} captured inputs")
        with open_safetensors(ckpt, hash_file=False) as source:
            model = detect(source.shapes)
            stack = ReferenceStack(model, source)
            samples = [stack.prepare(load_capture(p, model.config.hidden_size)[0]) for p in captures]
            tables = {}
            for label, im in (("without", None), ("with", imatrix)):
                importance = None if im is None else im.block_importance(model.block_name)
                with torch.no_grad():
                    result = sweep(stack, samples, a.types, importance=importance)
                tables[label] = result.table({}, model.n_blocks, a.types).costs()
            print("| type | cost without imatrix | with | with / without |")
            print("|---|---|---|---|")
            for t in a.types:
                without = sum(c[t] for c in tables["without"])
                with_im = sum(c[t] for c in tables["with"])
                print(f"| {t} | {without:.4g} | {with_im:.4g} | {with_im / without:.3f} |")
            print("| target bpw | recipe without imatrix: measured MSE | recipe with: measured MSE | ratio |")
            print("|---|---|---|---|")
            uniform = [average_bpw(plan_tensors(model, source.shapes, Recipe.uniform(model, t))) for t in a.types]
            lo, hi = min(uniform), max(uniform)
            for bpw in a.bpw or [lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3]:
                row = []
                for label, im in (("without", None), ("with", imatrix)):
                    alloc = optimize(model, source.shapes, tables[label], Target(bpw=bpw))
                    row.append((whole_model_mse(stack, samples, alloc.types, im), " ".join(alloc.types)))
                print(f"| {bpw:.2f} | {row[0][0]:.4g} ({row[0][1]}) | {row[1][0]:.4g} ({row[1][1]}) | "
                      f"{row[1][0] / row[0][0]:.3f} |")


if __name__ == "__main__":
    main()
