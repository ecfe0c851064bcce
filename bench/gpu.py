"""The GPU bench, in one run on one machine: codecs against ggml's C, convert at 6.9 bpw, the cost sweep.

    python bench/gpu.py [--workdir DIR] [--steps codecs,convert,sweep] [--rows 3072 --cols 12288]

1. codecs: Mparams/s of every type on a bf16 weight on the GPU (first call untimed: it
   builds the Triton kernels), against ggml's ``ggml_quantize_chunk`` on the same values
   with one thread and with all cores (threads over rows); bytes compared with ggml's. The
   same with an importance vector for the types that take one: its rate against the plain one.
2. convert: a random checkpoint of FLUX.1-dev's exact shape (11.9 B parameters, bf16, made
   on the GPU), then ``python -m quant convert --bpw 6.9 --device cuda``: wall time and the
   process's peak resident memory.
3. sweep: the cost sweep on that checkpoint, one 1024x1024 sample (4096 image + 512 text
   tokens), bf16 forwards: seconds per sample for Q8_0 + Q5_K + Q4_K and for all 12
   quantized types, with the split between quantizing and block forwards.
Ends with one JSON line of every figure. Targets (issue 8): every codec >= 10 000 Mparams/s;
convert <= 30 s; sweep <= 30 s per sample (3 types), <= 90 s (12 types).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from quant import codecs  # noqa: E402

THREE = ["Q8_0", "Q5_K", "Q4_K"]


def synchronized_seconds(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def ggml_quantize_rows(x: np.ndarray, qtype: str, threads: int, imatrix: np.ndarray | None = None
                       ) -> tuple[np.ndarray, float]:
    """ggml's bytes for float32 rows x (with an importance vector where given) and the seconds
    it took, rows split over ``threads``."""
    import ggml

    t = getattr(ggml, f"GGML_TYPE_{qtype}")
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    ggml.ggml_quantize_init(t)
    rows, n = x.shape
    out = np.zeros((rows, n // block * size), np.uint8)
    per = -(-rows // threads)
    weights = None if imatrix is None else imatrix.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def part(r: int) -> None:
        k = min(per, rows - r)
        ggml.ggml_quantize_chunk(t, x[r:].ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                 out[r:].ctypes.data_as(ctypes.c_void_p), 0, k, n, weights)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:  # ctypes lets go of the GIL: the C code runs in parallel
        list(pool.map(part, range(0, rows, per)))
    return out, time.perf_counter() - start


def bench_codecs(rows: int, cols: int, types: list[str]) -> dict:
    """Every type plain and, where it takes one, with an importance vector (issue 10: the same
    speed class as the plain path)."""
    x = (torch.randn(rows, cols, device="cuda") * 0.02).to(torch.bfloat16)
    xf = x.float().cpu().numpy()
    imatrix = (torch.randn(64, cols, device="cuda") ** 2).mean(dim=0)
    imatrix_np = imatrix.cpu().numpy()
    one_rows = max(1, rows // 8)  # one C thread on an eighth of the rows: same rate, an eighth of the wait
    mp = x.numel() / 1e6
    cores = os.cpu_count() or 1
    out = {}
    print(f"{'type':7} {'GPU Mp/s':>9} {'C 1 thread':>10} {f'C {cores} thr':>10} {'x 1 thr':>8} {'x all':>7} "
          f"{'bytes':>6} {'imatrix GPU Mp/s':>16} {'x plain':>7} {'bytes':>6}")
    for qtype in types:
        first = synchronized_seconds(lambda: codecs.quantize(x, qtype))
        buf = codecs.quantize(x, qtype)
        gpu_s = min(synchronized_seconds(lambda: codecs.quantize(x, qtype, out=buf)) for _ in range(3))
        ref, all_s = ggml_quantize_rows(xf, qtype, cores)
        _, one_s = ggml_quantize_rows(xf[:one_rows], qtype, 1)
        one_s *= rows / one_rows
        same = bool(np.array_equal(buf.cpu().numpy(), ref))
        out[qtype] = {"gpu_mps": mp / gpu_s, "c1_mps": mp / one_s, "call_mps": mp / all_s, "same": same,
                      "first_s": first}
        line = (f"{qtype:7} {mp / gpu_s:9.0f} {mp / one_s:10.1f} {mp / all_s:10.1f} {one_s / gpu_s:8.0f} "
                f"{all_s / gpu_s:7.1f} {'same' if same else 'DIFF':>6}")
        if codecs.get_codec(qtype).supports_imatrix:
            out[qtype]["imatrix_first_s"] = synchronized_seconds(lambda: codecs.quantize(x, qtype, imatrix=imatrix))
            im_s = min(synchronized_seconds(lambda: codecs.quantize(x, qtype, imatrix=imatrix, out=buf))
                       for _ in range(3))
            im_ref, _ = ggml_quantize_rows(xf, qtype, cores, imatrix_np)
            im_same = bool(np.array_equal(buf.cpu().numpy(), im_ref))
            out[qtype].update(imatrix_gpu_mps=mp / im_s, imatrix_same=im_same)
            line += f" {mp / im_s:16.0f} {gpu_s / im_s:7.2f} {'same' if im_same else 'DIFF':>6}"
        print(line, flush=True)
    return out


def make_checkpoint(path: Path) -> float:
    from safetensors.torch import save_file

    from quant.models.flux1 import Flux1
    from quant.synthetic import random_tensors

    t = time.perf_counter()
    sd = {k: v.cpu() for k, v in random_tensors(Flux1.model("flux1-dev"), seed=0, device="cuda")}
    save_file(sd, str(path))
    return time.perf_counter() - t


def bench_convert(src: Path, out: Path) -> dict:
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "quant", "convert", str(src), "--bpw", "6.9", "--device", "cuda",
                          "-o", str(out), "--overwrite"], cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status:
        raise RuntimeError(f"convert failed with status {status}")
    return {"wall_s": wall, "peak_rss_gib": usage.ru_maxrss / 2**20, "file_gb": out.stat().st_size / 1e9}


def bench_sweep(src: Path) -> dict:
    import quant.sweep
    from quant.checkpoint import open_safetensors
    from quant.models import detect
    from quant.models.flux1_blocks import ReferenceStack

    out = {}
    with open_safetensors(src, hash_file=False) as source:
        stack = ReferenceStack(detect(source.shapes), source, device="cuda", dtype=torch.bfloat16)
        sample = stack.make_inputs(0, 1024, 1024, sigma=0.5, txt_tokens=512)
        real = quant.sweep.quantized_weights
        for label, types in (("3_types", THREE), ("12_types", list(codecs.QUANTIZED_TYPE_NAMES))):
            spent = [0.0]

            def timed(weights, qtype, importance=None, spent=spent):
                torch.cuda.synchronize()
                t = time.perf_counter()
                result = real(weights, qtype, importance)
                torch.cuda.synchronize()
                spent[0] += time.perf_counter() - t
                return result

            quant.sweep.quantized_weights = timed
            try:
                wall = synchronized_seconds(lambda: quant.sweep.sweep(stack, [sample], types))
            finally:
                quant.sweep.quantized_weights = real
            out[label] = {"per_sample_s": wall, "quantize_s": spent[0], "forwards_s": wall - spent[0]}
            print(f"sweep {label}: {wall:.1f} s per sample ({spent[0]:.1f} s quantizing, "
                  f"{wall - spent[0]:.1f} s block forwards)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", help="where the checkpoint and the GGUF go (default: a temp folder)")
    ap.add_argument("--steps", default="codecs,convert,sweep")
    ap.add_argument("--rows", type=int, default=3072)
    ap.add_argument("--cols", type=int, default=12288)
    ap.add_argument("--types", nargs="+", default=list(codecs.QUANTIZED_TYPE_NAMES) + ["BF16", "F16"])
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device")
    steps = a.steps.split(",")
    figures: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cpu_cores": os.cpu_count()}
    print(f"{figures['device']}, torch {torch.__version__}, {os.cpu_count()} CPU cores", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))  # timeout's TERM still prints the JSON
    try:
        run_steps(steps, a, figures)
    finally:  # a lease is minutes long: what was measured before a failure still comes out
        print(json.dumps(figures))


def run_steps(steps: list[str], a: argparse.Namespace, figures: dict) -> None:
    if "codecs" in steps:
        figures["codecs"] = bench_codecs(a.rows, a.cols, a.types)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="mxgguf-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "flux1-dev-random.safetensors"
    if {"convert", "sweep"} & set(steps) and not src.exists():
        figures["checkpoint_s"] = make_checkpoint(src)
        print(f"FLUX.1-dev-shaped checkpoint made in {figures['checkpoint_s']:.0f} s", flush=True)
    if "convert" in steps:
        figures["convert_6_9"] = bench_convert(src, work / "out.gguf")
        print(f"convert --bpw 6.9: {figures['convert_6_9']}", flush=True)
    if "sweep" in steps:
        figures["sweep"] = bench_sweep(src)


if __name__ == "__main__":
    main()
