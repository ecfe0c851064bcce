"""The nodes in a real ComfyUI server: capture overhead per captured step, and quantize +
save time and peak memory.

    python bench/nodes.py [--capture tiny stock] [--quantize 2+4] [--steps 4] [--types ...]

Needs ComfyUI with ComfyUI-GGUF (found as the tests find it). Models are random FLUX
checkpoints made on the fly: ``tiny`` (hidden 256, 2+4 blocks) and ``stock`` (hidden
3072, 1+1 blocks) for capture; stock width at the given depths for quantize + save.

Capture: the same workflow with and without Capture Layer Costs (different seeds, so
nothing is cached, after a warm-up run), one step captured; the difference is the cost
of capturing one step, printed beside one plain model step (the anchor).
Quantize + save: a fresh server loads the model (its resident memory then is the
baseline), then Mixed GGUF Quantize + Save mx GGUF run; prints time, the server's peak
RSS above the baseline (expected: about the file's size, the quantized bytes it holds), the
file's size.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from safetensors.torch import save_file  # noqa: E402

from comfyui_rig import ComfyServer, find_comfyui, loader, sampling  # noqa: E402
from quant.costs import CostTable, save_costs  # noqa: E402
from quant.models import Model  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.recipe import Recipe  # noqa: E402
from quant.tensor_plan import average_bpw, plan_tensors  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402

MODELS = {"tiny": Flux1.model(), "stock": Flux1.model("flux1-stock", depth_double=1, depth_single=1)}
GiB = 2**30


def status_kb(pid: int, field: str = "VmHWM") -> int:
    """Peak (VmHWM) or current (VmRSS) resident memory of a process."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def timed(server: ComfyServer, workflow: dict) -> float:
    t = time.perf_counter()
    server.run(workflow, timeout=3600)
    return time.perf_counter() - t


def bench_capture(server: ComfyServer, name: str, steps: int, types: str) -> None:
    model = MODELS[name]
    unet = f"bench-{name}.safetensors"
    save_file(random_state_dict(model, seed=3), str(server.models / unet))
    plain = lambda seed: {"load": loader(unet), **sampling(["load", 0], seed, "bench/p", steps=steps)}  # noqa: E731
    timed(server, plain(100))  # warm-up: load the model
    t_plain = min(timed(server, plain(101)), timed(server, plain(102)))
    capture = {"load": loader(unet), "capture": {"class_type": "MxCaptureLayerCosts", "inputs": {
        "model": ["load", 0], "costs_file": f"bench-{name}", "step": 0, "samples_per_run": 1, "types": types}}}
    t_capture = timed(server, {**capture, **sampling(["capture", 0], 103, "bench/c", steps=steps)})
    n_types = len(types.split(","))
    blocks = model.n_blocks
    step = t_plain / steps
    overhead = t_capture - t_plain
    print(f"capture {name:5s} ({blocks} blocks, {n_types} types, {steps} steps): plain run {t_plain:.2f}s "
          f"({step:.3f}s/step), with capture {t_capture:.2f}s -> {overhead:.2f}s per captured step "
          f"= {overhead / step:.1f} model steps; sweep forwards {blocks + n_types * blocks * (blocks + 1) // 2} "
          f"blocks vs {n_types * blocks * blocks + blocks} re-running the stack")
    server.free()


def uniform_table(model: Model, types: list[str]) -> CostTable:
    """Costs that make the optimizer mix: later blocks cheaper, cheaper types dearer."""
    table = CostTable.empty(model.fingerprint(), model.n_blocks, types)
    for b in range(model.n_blocks):
        for i, t in enumerate(types):
            table.add(b, t, float((i + 1) ** 3) / (b + 1), 1)
    return table


def bench_quantize(comfy: tuple[Path, Path], depth: str, types: list[str]) -> None:
    d, s = (int(v) for v in depth.split("+"))
    model = Flux1.model("flux1-stock", depth_double=d, depth_single=s)
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(*comfy, Path(base))
        unet = "bench-quant.safetensors"
        save_file(random_state_dict(model, seed=4), str(server.models / unet))
        costs = server.base / "models" / "mxgguf_costs"
        costs.mkdir(parents=True)
        save_costs(uniform_table(model, types), costs / "bench.json")
        lo, hi = (average_bpw(plan_tensors(model, model.shapes(), Recipe.uniform(model, t)))
                  for t in (types[-1], types[0]))
        server.start()
        try:
            server.run({"load": loader(unet), "report": {"class_type": "MxTestModelReport",
                                                         "inputs": {"model": ["load", 0]}}})
            base_kb, loaded_kb = status_kb(server.proc.pid), status_kb(server.proc.pid, "VmRSS")
            Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # restart the peak from here
            t = timed(server, {"load": loader(unet), "quant": {"class_type": "MxMixedGGUFQuantize", "inputs": {
                "model": ["load", 0], "costs": "bench.json", "target": "bits per parameter",
                "value": round((lo + hi) / 2, 2), "max_slowdown": 0.0, "types": "all"}},
                "save": {"class_type": "MxSaveMxGGUF", "inputs": {"mx_gguf": ["quant", 0],
                                                                   "model_name": "bench", "folder": "unet"}}})
            peak = status_kb(server.proc.pid)
            out = next(server.unet.glob("bench_mx*.gguf"))
            size, out_name = out.stat().st_size, out.name
        finally:
            server.stop()
    print(f"quantize+save stock {depth} ({', '.join(types)}): {t:.1f}s; server RSS with the model loaded "
          f"{loaded_kb / 2**20:.2f} GiB (loading peaked at {base_kb / 2**20:.2f}), peak through quantize+save "
          f"{peak / 2**20:.2f} GiB = {(peak - loaded_kb) / 2**20:.2f} GiB above the loaded model; "
          f"{out_name} {size / GiB:.2f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capture", nargs="*", default=["tiny", "stock"], choices=list(MODELS))
    ap.add_argument("--quantize", nargs="*", default=["2+4"], help="stock-width depths, e.g. 2+4")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--types", default="Q8_0, Q6_K, Q5_K, Q4_K")
    a = ap.parse_args()
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"bench/nodes.py needs ComfyUI: {found}")
    if a.capture:
        with tempfile.TemporaryDirectory() as base:
            server = ComfyServer(*found, Path(base))
            server.start()
            try:
                for name in a.capture:
                    bench_capture(server, name, a.steps, a.types)
            finally:
                server.stop()
    for depth in a.quantize:
        bench_quantize(found, depth, [t.strip() for t in a.types.split(",")])


if __name__ == "__main__":
    main()
