"""Codec throughput against ggml's C quantizers, on one FLUX-sized weight, in one run.

    python bench/codecs.py [TYPE ...] [--rows 3072 --cols 12288] [--repeat 5] [--imatrix]

Prints Mparams/s for our torch codecs (CPU with torch's default threads; CUDA too where
available) and for ggml's ``ggml_quantize_chunk`` (ggml-python, one thread) on the same
float32 matrix, the ratio, and whether the bytes match. Target: ratio >= 1.0 per type.
"first s" is our first call, untimed in the rest: it includes building the K-quants'
fused search steps where this machine has no kernel for them yet (``~/.cache/mxgguf/kernels``).
Both sides write into an output buffer allocated once, as a converter reuses one: the
timings are of quantizing, not of the kernel handing out fresh pages. ``--imatrix``: both
sides quantize with an importance vector (mean squares of random activations), ggml's
importance-weighted paths (Q8_0, F16, BF16 ignore it).
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quant import codecs  # noqa: E402


def ggml_quantizer(x: np.ndarray, qtype: str, imatrix: np.ndarray | None) -> Callable[[], np.ndarray]:
    import ggml

    t = getattr(ggml, f"GGML_TYPE_{qtype}")
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    out = np.zeros(x.size // block * size, np.uint8)
    ggml.ggml_quantize_init(t)
    weights = None if imatrix is None else imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def run() -> np.ndarray:
        ggml.ggml_quantize_chunk(t, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                 out.ctypes.data_as(ctypes.c_void_p), 0, x.shape[0], x.shape[1], weights)
        return out

    return run


def best_seconds(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best time of each function; they take turns, so a slow spell of a shared machine
    falls on all of them rather than on whichever ran then."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("types", nargs="*", default=[t for t in codecs.QUANTIZED_TYPE_NAMES] + ["BF16", "F16"])
    ap.add_argument("--rows", type=int, default=3072)
    ap.add_argument("--cols", type=int, default=12288)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--imatrix", action="store_true", help="quantize with an importance vector")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)
    xt = torch.from_numpy(x)
    imatrix = (rng.standard_normal((64, a.cols)) ** 2).mean(axis=0).astype(np.float32) if a.imatrix else None
    im = None if imatrix is None else torch.from_numpy(imatrix)
    cuda = torch.cuda.is_available()
    mp = x.size / 1e6
    print(f"{a.rows}x{a.cols} float32, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name()}" if cuda else ", no GPU"))
    print(f"{'type':7} {'ggml C Mp/s':>11} {'ours CPU Mp/s':>13} {'ratio':>6} {'bytes':>6} {'first s':>7}"
          + (f" {'ours GPU Mp/s':>13} {'GPU ratio':>9}" if cuda else ""))
    for qtype in a.types:
        ref_fn = ggml_quantizer(x, qtype, imatrix)
        first = time.perf_counter()
        ours = codecs.quantize(xt, qtype, imatrix=im)
        first = time.perf_counter() - first
        same = np.array_equal(ours.numpy().reshape(-1), ref_fn())
        ref_s, our_s = best_seconds([ref_fn, lambda: codecs.quantize(xt, qtype, imatrix=im, out=ours)], a.repeat)
        line = f"{qtype:7} {mp / ref_s:11.1f} {mp / our_s:13.1f} {ref_s / our_s:6.2f} {'same' if same else 'DIFF':>6} {first:7.1f}"
        if cuda:
            xg, out_g, im_g = xt.cuda(), ours.cuda(), None if im is None else im.cuda()
            (gpu_s,) = best_seconds([lambda: codecs.quantize(xg, qtype, imatrix=im_g, out=out_g)], a.repeat)
            line += f" {mp / gpu_s:13.1f} {ref_s / gpu_s:9.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
