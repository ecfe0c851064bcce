"""Capture Layer Costs on ComfyUI's own forward: sweep time and memory per sample per family at
stock width, and which error a cost should be (FLUX.1).

    python bench/capture.py [--parts speed,measure] [--size 256] [--depth 3 6]

Runs a real ComfyUI (the tests' rig) on random stock-width checkpoints, sampled with the tests'
conditioning node at SIZE x SIZE.

speed: per family (FLUX.1, Chroma, Qwen-Image and Lumina 2 with 2 blocks per group at stock width,
Wan 2.1 1.3B whole), the same graph sampled without and then with Capture (one sample, Q8_0):
the difference is the sweep's time per sample; the table's provenance gives the block forwards
and the bytes recorded per sample, and from them the bytes per block per token. For FLUX.1 the
same sweep runs headless on the pack's reference blocks over the inputs Capture saved: the
sweep the node ran before the replay, on the same model.

measure: FLUX.1 at stock width with DEPTH blocks, captured twice at the same step, once per
measure (final hidden state, model output). Prints each type's rank correlation (Spearman)
across blocks of the two tables, then at a few sizes the recipe each table picks, quantized by
Quantize and sampled: the final latent's MSE against the unquantized model's, same seed.
Random weights have no outlier channels: this compares the measures on real activations, not
FLUX.1's own sensitivities.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from comfyui_rig import ComfyServer, capture, find_comfyui, loader, quantize, sampling, saved_latent  # noqa: E402
from estimate import spearman  # noqa: E402
from quant.capture_file import load_capture  # noqa: E402
from quant.checkpoint import open_safetensors  # noqa: E402
from quant.costs import FINAL_HIDDEN_STATE, MODEL_OUTPUT, load_costs  # noqa: E402
from quant.models import FAMILIES, Model, detect  # noqa: E402
from quant.models.flux1_blocks import ReferenceStack  # noqa: E402
from quant.optimize import Target, optimize  # noqa: E402
from quant.recipe import Recipe  # noqa: E402
from quant.sweep import sweep  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402
from quant.tensor_plan import average_bpw, plan_tensors  # noqa: E402

SPEED_MODELS = {"flux1": ("flux1-stock", {}), "chroma": ("chroma", {"depth_double": 2, "depth_single": 2}),
                "qwen_image": ("qwen-image", {"depth": 2}), "lumina2": ("lumina2", {"depth": 2}),
                "wan": ("wan2.1-t2v-1.3b", {})}


def timed_run(server: ComfyServer, workflow: dict) -> tuple[dict, float]:
    t = time.perf_counter()
    entry = server.run(workflow, timeout=7200)
    return entry, time.perf_counter() - t


def checkpoint(server: ComfyServer, model: Model, name: str) -> str:
    save_file(random_state_dict(model, seed=21), str(server.models / f"{name}.safetensors"))
    return f"{name}.safetensors"


def speed(server: ComfyServer, size: int) -> dict:
    costs_dir = server.base / "models" / "mxgguf_costs"
    out = {}
    for family, (config, changes) in SPEED_MODELS.items():
        model = FAMILIES[family].model(config, **changes)
        ckpt = checkpoint(server, model, f"speed-{family}")
        kw = {"steps": 2, "size": size, "video": family == "wan"}
        timed_run(server, {"load": loader(ckpt), **sampling(["load", 0], 1, "bench/warm", **kw)})
        _, plain = timed_run(server, {"load": loader(ckpt), **sampling(["load", 0], 2, "bench/plain", **kw)})
        node = capture(["load", 0], f"speed-{family}", "Q8_0", step=1)
        node["inputs"]["save_inputs"] = family == "flux1"
        _, with_capture = timed_run(server, {"load": loader(ckpt), "capture": node,
                                             **sampling(["capture", 0], 2, "bench/captured", **kw)})
        table = load_costs(costs_dir / f"speed-{family}.json")
        recorded = table.provenance["recorded_bytes_per_sample"]
        row = {"model": model.describe(), "blocks": model.n_blocks, "sweep_s": with_capture - plain,
               "block_forwards": table.provenance["block_forwards_per_sample"], "recorded_mb": recorded / 1e6}
        if family == "flux1":
            row["headless_sweep_s"] = headless_sweep(server.models / ckpt, costs_dir / f"speed-{family}.inputs")
        out[family] = row
        print(json.dumps({family: row}), flush=True)
        server.free()
    return out


def headless_sweep(ckpt: Path, inputs: Path) -> float:
    """The reference blocks' sweep (Q8_0) over the inputs Capture saved, seconds."""
    (saved,) = sorted(inputs.glob("*.safetensors"))
    with open_safetensors(ckpt) as source:
        stack = ReferenceStack(detect(source.shapes), source)
        sample = stack.prepare(load_capture(saved, stack.width)[0])
        t = time.perf_counter()
        sweep(stack, [sample], ["Q8_0"])
        return time.perf_counter() - t


def measures(server: ComfyServer, size: int, depth: tuple[int, int], types: list[str], points: int) -> dict:
    model = FAMILIES["flux1"].model("flux1-stock", depth_double=depth[0], depth_single=depth[1])
    ckpt = checkpoint(server, model, "measure-flux1")
    costs_dir = server.base / "models" / "mxgguf_costs"
    seed, steps = 5, 4
    tables = {}
    for measure in (FINAL_HIDDEN_STATE, MODEL_OUTPUT):
        name = f"measure-{measure.replace(' ', '-')}"
        node = capture(["load", 0], name, ", ".join(types), step=2)
        node["inputs"]["measure"] = measure
        server.run({"load": loader(ckpt), "capture": node,
                    **sampling(["capture", 0], seed, "bench/measure", steps=steps, size=size)}, timeout=7200)
        tables[measure] = load_costs(costs_dir / f"{name}.json")
    hidden, output = (tables[m].costs() for m in (FINAL_HIDDEN_STATE, MODEL_OUTPUT))
    rho = {t: spearman([c[t] for c in hidden], [c[t] for c in output]) for t in types}
    print("rank correlation across blocks, hidden state vs model output: "
          + ", ".join(f"{t} {r:.3f}" for t, r in rho.items()), flush=True)
    plain = saved_latent(server, server.run({"load": loader(ckpt), **sampling(
        ["load", 0], seed, "bench/plain", steps=steps, size=size)}))
    shapes = model.shapes()
    lo, hi = (average_bpw(plan_tensors(model, shapes, Recipe.uniform(model, t))) for t in (types[0], types[-1]))
    rows = []
    for k in range(1, points + 1):
        bpw = round(lo + (hi - lo) * k / (points + 1), 2)
        row = {"bpw": bpw}
        for measure, name in ((FINAL_HIDDEN_STATE, "hidden"), (MODEL_OUTPUT, "output")):
            recipe = optimize(model, shapes, tables[measure].costs(), Target(bpw=bpw)).types
            costs = f"measure-{measure.replace(' ', '-')}.json"
            got = saved_latent(server, server.run({"load": loader(ckpt), "quant": quantize(["load", 0], costs, bpw),
                                                   **sampling(["quant", 1], seed, "bench/q", steps=steps, size=size)},
                                                  timeout=7200))
            row[name] = {"recipe": " ".join(recipe), "latent_mse": float(((got - plain) ** 2).mean())}
        rows.append(row)
        print(json.dumps(row), flush=True)
        server.free()
    return {"spearman": rho, "recipes": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="speed,measure")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels")
    ap.add_argument("--depth", type=int, nargs=2, default=[3, 6], metavar=("DOUBLE", "SINGLE"))
    ap.add_argument("--types", nargs="+", default=["Q2_K", "Q4_K"])
    ap.add_argument("--points", type=int, default=2, help="sizes between the smallest and largest type")
    a = ap.parse_args()
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"bench/capture.py needs ComfyUI: {found}")
    torch.set_grad_enabled(False)
    figures = {}
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(*found, Path(base))
        server.start()
        try:
            if "speed" in a.parts:
                figures["speed"] = speed(server, a.size)
            if "measure" in a.parts:
                figures["measure"] = measures(server, a.size, tuple(a.depth), a.types, a.points)
        finally:
            server.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
