"""Cost sweep against the direct approach, in one run: block forwards and wall time.

    python bench/sweep.py [--types Q8_0 Q4_K Q2_K] [--resolution 256]

The direct approach quantizes one block, re-runs the whole stack and compares the final state,
for every (block, type): N*T*N block forwards per sample (plus one clean pass). The sweep
keeps the clean input to every block and re-runs only the blocks after the quantized one:
N + T*N(N+1)/2. Measured on FLUX.1's depth (19 + 38) at narrow width (hidden 256), and on
a stock-width shallow model; target <= 0.55x the forwards.
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
from quant.models.flux1 import Flux1  # noqa: E402
from quant.models.flux1_blocks import ReferenceStack  # noqa: E402
from quant.sweep import quantized_weights, sweep  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402


@torch.no_grad()
def whole_stack(stack: ReferenceStack, inputs, types) -> int:
    """The direct approach; returns block forwards."""
    def run() -> torch.Tensor:
        state = stack.start(inputs)
        for b in range(stack.n_blocks):
            state = stack.forward(b, state, inputs)
        return stack.output(state)

    clean, forwards = run(), stack.n_blocks
    for b in range(stack.n_blocks):
        weights = stack.weights(b)
        for qtype in types:
            originals = dict(weights)
            weights.update(quantized_weights(weights, qtype))
            ((run() - clean) ** 2).mean()
            weights.update(originals)
            forwards += stack.n_blocks
    return forwards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=["Q8_0", "Q4_K", "Q2_K"])
    ap.add_argument("--resolution", type=int, default=256)
    a = ap.parse_args()
    models = {"narrow 19+38 (hidden 256)": Flux1.model(depth_double=19, depth_single=38),
              "stock 1+2 (hidden 3072)": Flux1.model("flux1-stock", depth_double=1, depth_single=2)}
    for label, model in models.items():
        sd = random_state_dict(model, dtype=torch.bfloat16)
        stack = ReferenceStack(detect({k: tuple(v.shape) for k, v in sd.items()}), state_dict_source(sd, label))
        inputs = stack.make_inputs(0, a.resolution, a.resolution)
        t = time.perf_counter()
        ours = sweep(stack, [inputs], a.types).block_forwards
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        theirs = whole_stack(stack, inputs, a.types)
        theirs_s = time.perf_counter() - t
        print(f"{label}: {len(a.types)} types, block forwards {ours} vs {theirs} ({ours / theirs:.3f}x), "
              f"wall {ours_s:.1f} s vs {theirs_s:.1f} s ({ours_s / theirs_s:.3f}x)", flush=True)


if __name__ == "__main__":
    main()
