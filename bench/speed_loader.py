"""Predicted against measured step time, on the real loader: files of one size made with and
without a slowdown budget, loaded with ComfyUI-GGUF's UnetLoaderGGUF in a real ComfyUI, sampled.

    python bench/speed_loader.py [--depth 2 4] [--bpw 6.9] [--size 256] [--steps 5] [--device cpu]

A random stock-width FLUX (hidden 3072) at the given depths; costs: the built-in FLUX.1-dev
table's first double and single blocks (only the choice matters here, not its quality). First
``python -m quant speed`` measures a profile with ComfyUI's own Python (its torch is the one
that samples) at the token count the sampler will see (``size`` pixels: (size/16)^2 image
tokens, plus a ninth of the total as text). Then three recipes at the same size target: the
unbudgeted optimum, the least cost at 80 % of its dequantization time, and the fastest
reachable; each is written, and each file and the source checkpoint (UNETLoader, the anchor)
is sampled, in ``--rounds`` alternating rounds (a shared machine's speed drifts; the best
round counts). A step's time is taken from ComfyUI's own progress messages (median gap
between consecutive steps after the first, so loading and the first step's allocations are
left out). Prints predicted and measured step time over the source checkpoint's, and their
ratio; the target is within 15 %.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from safetensors.torch import save_file  # noqa: E402

from comfyui_rig import ComfyServer, find_comfyui, loader, sampling, step_seconds  # noqa: E402
from quant.__main__ import convert  # noqa: E402
from quant.costs import resolve_costs  # noqa: E402
from quant.models import Model  # noqa: E402
from quant.models.flux1 import Flux1  # noqa: E402
from quant.optimize import Target, optimize, pareto  # noqa: E402
from quant.tensor_plan import plan_tensors  # noqa: E402
from quant.speed import load_speed  # noqa: E402
from quant.synthetic import random_state_dict  # noqa: E402


def allocations(model: Model, shapes, costs, bpw: float, speed) -> dict:
    """At one size: the unbudgeted optimum, the least cost at 80 % of its dequantization time,
    and the fastest reachable."""
    free = optimize(model, shapes, costs, Target(bpw=bpw), speed=speed)
    faster = optimize(model, shapes, costs, Target(bpw=bpw), speed=speed,
                      max_slowdown=1 + 0.8 * (free.predicted_slowdown - 1))
    fastest = pareto(model, shapes, costs, Target(bpw=bpw), speed, points=2)[0]
    return {"unbudgeted": free, "-20% dequant": faster, "fastest": fastest}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, nargs=2, default=[2, 4], metavar=("DOUBLE", "SINGLE"))
    ap.add_argument("--bpw", type=float, default=6.9)
    ap.add_argument("--size", type=int, default=256, help="sample width and height in pixels")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the profile is measured: where ComfyUI samples")
    a = ap.parse_args()
    found = find_comfyui()
    if isinstance(found, str):
        sys.exit(f"bench/speed_loader.py needs ComfyUI: {found}")
    model = Flux1.model("flux1-stock", depth_double=a.depth[0], depth_single=a.depth[1])
    shapes = model.shapes()
    image_tokens = (a.size // 16) ** 2
    text_tokens = image_tokens // 8  # a ninth of the total, as the profile's block forwards split it
    tokens = image_tokens + text_tokens
    builtin = resolve_costs("builtin:flux1-dev").costs()
    costs = builtin[: model.config.depth_double] + builtin[19: 19 + model.config.depth_single]

    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(*found, Path(base))
        source = server.models / "bench-speed.safetensors"
        save_file(random_state_dict(model, seed=5), str(source))
        profile = Path(base) / "profile.json"
        t0 = time.perf_counter()
        subprocess.run([str(found[1]), "-m", "quant", "speed", "--model", str(source), "--tokens", str(tokens),
                        "--device", a.device, "--comfyui-gguf", str(found[0] / "custom_nodes"), "-o", str(profile)],
                       cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
        speed = load_speed(profile)
        print(f"profile: {speed.device}, {speed.dtype}, {tokens} tokens, {speed.dequantizer}: "
              f"{time.perf_counter() - t0:.0f} s; unquantized blocks {speed.step_seconds(model):.2f} s/step")
        ref = max(speed.dequant_seconds, key=lambda k: math.prod(map(int, k.split("x"))))
        print(f"dequantize {ref}, ms: " + ", ".join(f"{t} {v * 1e3:.0f}" for t, v in speed.dequant_seconds[ref].items()))
        recipes = allocations(model, shapes, costs, a.bpw, speed)
        files = {}
        for name, alloc in recipes.items():
            out = server.unet / f"bench-speed-{len(files)}.gguf"
            convert(source, out, alloc.recipe, quiet=True)
            files[name] = out.name
        server.start()
        try:
            def sample(unet: str, kind: str, seed: int, steps: int) -> dict:
                wf = {"load": loader(unet, kind), **sampling(["load", 0], seed, "bench/speed", steps=steps,
                                                             size=a.size)}
                wf["cond"]["inputs"]["tokens"] = text_tokens
                return wf

            measured: dict[str, float] = {}
            models = [("source (UNETLoader)", source.name, "safetensors")] + [(n, f, "gguf") for n, f in files.items()]
            for r in range(a.rounds):
                for i, (name, unet, kind) in enumerate(models):
                    step_seconds(server, sample(unet, kind, 100 * r + i, 2))  # load it, warm up
                    t = step_seconds(server, sample(unet, kind, 100 * r + 50 + i, a.steps))
                    measured[name] = min(t, measured.get(name, t))
                    server.free()
        finally:
            server.stop()
    anchor = measured.pop("source (UNETLoader)")
    print(f"stock width {model.config.depth_double}+{model.config.depth_single} blocks, "
          f"{a.size}x{a.size} ({tokens} tokens), "
          f"target {a.bpw} bpw; source checkpoint (UNETLoader): {anchor:.2f} s/step")
    print("| recipe | bits/param | predicted slowdown | measured slowdown | predicted / measured | types |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name, alloc in recipes.items():
        predicted = speed.slowdown(model, plan_tensors(model, shapes, alloc.recipe))
        ratio = predicted / (measured[name] / anchor)
        worst = max(worst, abs(ratio - 1))
        print(f"| {name} | {alloc.bpw:.3f} | {predicted:.3f} | {measured[name] / anchor:.3f} | {ratio:.3f} | "
              f"{' '.join(alloc.types)} |")
    print(f"worst predicted/measured off by {worst:.1%} (target <= 15 %)")


if __name__ == "__main__":
    main()
