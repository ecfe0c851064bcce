"""End-to-end on a CPU, in one run: ``quant convert --type T`` against ggml's C, and ``quant costs`` per sample.

    python bench/pipeline.py [--types Q6_K Q5_K ...] [--skip-costs]

On a random checkpoint of stock width with 1 double + 1 single block (541 M parameters, bf16):
- convert: wall time of ``python -m quant convert SRC --type T`` (a whole process: start-up,
  reading, checks, quantizing, writing, read-back), with a warm compile cache (a process
  quantizing one weight of each type runs first), against ggml's ``ggml_quantize_chunk``
  with one thread quantizing the same weights from float32 in memory, no I/O. Target
  ratio >= 1.0 for the K and IQ types.
- costs: ``python -m quant costs --types Q4_K`` with ``--samples 1`` and ``--samples 3``;
  target: three samples in <= 1.6x the time of one (they share each block's quantization).
"""
from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from quant.checkpoint import open_safetensors  # noqa: E402
from quant.models import detect  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.recipe import Recipe  # noqa: E402
from quant.tensor_plan import plan_tensors  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402

TYPES = ["Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K", "IQ4_NL", "IQ4_XS", "Q8_0"]


def run(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "quant", *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


def warm_compile_cache(types: list[str]) -> None:
    code = ("import torch, sys; from quant import codecs\n"
            "x = torch.randn(2048, 3072) * 0.02\n"
            "for t in sys.argv[1:]: codecs.quantize(x, t)\n")
    subprocess.run([sys.executable, "-c", code, *types], cwd=ROOT, check=True)


def ggml_seconds(src: Path, qtype: str) -> float:
    """ggml's single thread quantizing the weights a ``--type`` convert quantizes, from float32 in memory."""
    import ggml

    t = getattr(ggml, f"GGML_TYPE_{qtype}")
    ggml.ggml_quantize_init(t)
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    total = 0.0
    with open_safetensors(src, hash_file=False) as source:
        model = detect(source.shapes)
        for p in plan_tensors(model, source.shapes, Recipe.uniform(model, qtype)):
            if p.qtype != qtype:
                continue
            x = np.ascontiguousarray(source.read(p.source_key).float().numpy().reshape(-1, p.shape[-1]))
            out = np.empty(x.size // block * size, np.uint8)
            start = time.perf_counter()
            ggml.ggml_quantize_chunk(t, x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                     out.ctypes.data_as(ctypes.c_void_p), 0, x.shape[0], x.shape[1], None)
            total += time.perf_counter() - start
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--skip-costs", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mxgguf-pipeline-"))
    src = work / "stock-1-1.safetensors"
    model = Flux1.model("flux1-stock", depth_double=1, depth_single=1)
    save_file(random_state_dict(model, seed=1), str(src))
    print(f"stock width 1+1 ({src.stat().st_size / 2**30:.2f} GiB bf16), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    warm_compile_cache(a.types)
    print(f"{'type':7} {'convert s':>9} {'ggml 1 thread s':>15} {'ratio':>6}")
    for qtype in a.types:
        ours = run("convert", str(src), "--type", qtype, "-o", str(work / "out.gguf"), "--overwrite")
        ref = ggml_seconds(src, qtype)
        print(f"{qtype:7} {ours:9.1f} {ref:15.1f} {ref / ours:6.2f}", flush=True)
    if not a.skip_costs:
        one = run("costs", str(src), "-o", str(work / "c1.json"), "--types", "Q4_K", "--samples", "1")
        three = run("costs", str(src), "-o", str(work / "c3.json"), "--types", "Q4_K", "--samples", "3")
        print(f"costs --types Q4_K: 1 sample {one:.1f} s, 3 samples {three:.1f} s ({three / one:.2f}x)")


if __name__ == "__main__":
    main()
