"""Peak memory and time of a conversion, on full-width checkpoints of any family made on the fly.

    python bench/convert_memory.py [--model flux1-dev] [--depths 2+4 4+8] [--recipe-types Q8_0,Q6_K,...]
                                   [--keep DIR] [--lora-rank R]

For each depth (blocks per group, ``+`` between groups; groups whose config shares one count take
the first) it writes a random checkpoint of the named full-size model (``python -m quant optimize
--help`` lists them) in bf16 with that many blocks, then converts it with ``python -m quant
convert`` in a fresh process that reports its own peak RSS and its RSS after imports (the
interpreter's baseline). Streaming means the peak above baseline stays flat as the model grows.
Target: <= 2 GB above baseline, within 10 % between depths. It also projects the full model's
time (at the measured parameters per second) and memory (the same peak: it does not grow).

With ``--lora-rank R`` each checkpoint is converted again with a random LoRA of rank R on every
block weight, the embedders and the final layer (``convert --lora``), and the two peaks are
compared. Target: the patched peak within the unpatched one's + 10 %.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Runs in the child: baseline after imports, then the CLI's convert, then peak RSS.
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch, gguf, safetensors, numpy  # the imports a conversion needs, before the baseline
from quant.__main__ import convert
from quant.lora import LoraSpec
from quant.recipe import load_recipe
from pathlib import Path

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

base = status_kb("VmRSS")
t = time.perf_counter()
loras = [LoraSpec(Path(p)) for p in sys.argv[5:]]
r = convert(Path(sys.argv[2]), Path(sys.argv[3]), load_recipe(sys.argv[4]), quiet=True, loras=loras)
# VmHWM, not ru_maxrss: ru_maxrss carries over the parent's high-water mark through exec
print(json.dumps({"baseline_kb": base, "peak_kb": status_kb("VmHWM"),
                  "seconds": time.perf_counter() - t, "bytes": r.size_bytes, "bpw": r.bpw}))
"""


def make_checkpoint(path: Path, name: str, depths: dict[str, int]) -> int:
    """Write the random checkpoint from a separate process, so this one never holds a model
    (a process forked from a large parent starts out with the parent's pages)."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from safetensors.torch import save_file; "
            "from quant.models import named_model; from quant.synthetic import random_state_dict; "
            "model = named_model(sys.argv[3]); model = model.family.model(model.config, **json.loads(sys.argv[4])); "
            "sd = random_state_dict(model); save_file(sd, sys.argv[2]); print(sum(t.numel() for t in sd.values()))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(path), name, json.dumps(depths)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def make_lora(path: Path, name: str, depths: dict[str, int], rank: int) -> None:
    """A random LoRA of ``rank`` on every 2-D tensor of the checkpoint, from a separate process."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from safetensors.torch import save_file; "
            "from quant.models import named_model; from quant.synthetic import random_lora; "
            "model = named_model(sys.argv[3]); model = model.family.model(model.config, **json.loads(sys.argv[4])); "
            "keys = [k for k, s in model.shapes().items() if len(s) == 2]; "
            "save_file(random_lora(model, keys, rank=int(sys.argv[5]), alpha=1.0), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(ROOT), str(path), name, json.dumps(depths), str(rank)],
                   capture_output=True, text=True, check=True)


def convert_in_child(src: Path, out: Path, recipe: Path, *loras: Path) -> dict:
    """The child's report of one conversion (a fresh process: its peak is its own)."""
    out.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(src), str(out), str(recipe), *map(str, loras)],
                          capture_output=True, text=True, check=True)
    out.unlink()
    return json.loads(proc.stdout.strip().splitlines()[-1])


def depth_fields(model, spec: str) -> dict[str, int]:
    """``2+4`` -> the config's depth fields for the model's groups, in order."""
    counts = [int(v) for v in spec.split("+")]
    if len(counts) != len(model.family.groups):
        raise SystemExit(f"{model.describe()} has {len(model.family.groups)} block groups; give as many counts")
    fields: dict[str, int] = {}
    for group, n in zip(model.family.groups, counts):
        fields.setdefault(group.depth_field, n)
    return fields


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="flux1-dev", help="named full-size model whose widths to use")
    ap.add_argument("--depths", nargs="+", default=["2+4", "4+8"])
    ap.add_argument("--recipe-types", default="Q8_0,Q6_K,Q5_K,Q4_K,IQ4_XS,Q3_K",
                    help="types assigned over the blocks, first to last")
    ap.add_argument("--keep", help="folder to keep the files in (default: a temp folder, removed)")
    ap.add_argument("--lora-rank", type=int, help="also convert with a random LoRA of this rank baked in")
    a = ap.parse_args()
    import math

    from quant.models import named_model
    from quant.recipe import Recipe, save_recipe

    full = named_model(a.model)
    full_params = sum(math.prod(s) for s in full.shapes().values())
    folder = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="mxgguf-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    ladder = a.recipe_types.split(",")
    results = []
    try:
        for depth in a.depths:
            fields = depth_fields(full, depth)
            model = full.family.model(full.config, **fields)
            stem = f"{a.model}-{depth}"
            src, out, recipe_path = folder / f"{stem}.safetensors", folder / f"{stem}.gguf", folder / f"r-{stem}.yaml"
            t = time.perf_counter()
            params = make_checkpoint(src, a.model, fields)
            made = time.perf_counter() - t
            n = model.n_blocks
            types = tuple(ladder[i * len(ladder) // n] for i in range(n))
            save_recipe(Recipe.for_model(model, types, name=f"bench {depth}"), recipe_path)
            r = convert_in_child(src, out, recipe_path)
            above = (r["peak_kb"] - r["baseline_kb"]) / 2**20
            results.append(above)
            rate = params / r["seconds"]
            print(f"{model.describe()}: {params / 1e9:.2f} B params ({src.stat().st_size / 2**30:.2f} GiB bf16, made in "
                  f"{made:.0f} s) -> {r['bytes'] / 2**30:.2f} GiB at {r['bpw']:.2f} bpw in {r['seconds']:.0f} s "
                  f"({rate / 1e6:.0f} Mparams/s); RSS baseline {r['baseline_kb'] / 2**20:.2f} GiB, "
                  f"peak {r['peak_kb'] / 2**20:.2f} GiB, above baseline {above:.2f} GiB", flush=True)
            if a.lora_rank:
                lora = folder / f"lora-{stem}.safetensors"
                make_lora(lora, a.model, fields, a.lora_rank)
                p = convert_in_child(src, out, recipe_path, lora)
                print(f"  with a rank-{a.lora_rank} LoRA on every 2-D tensor ({lora.stat().st_size / 2**20:.0f} MiB): "
                      f"{p['seconds']:.0f} s, peak {p['peak_kb'] / 2**20:.2f} GiB = {p['peak_kb'] / r['peak_kb']:.3f}x "
                      f"the unpatched peak (target <= 1.10x); above baseline {(p['peak_kb'] - p['baseline_kb']) / 2**20:.2f} "
                      f"GiB", flush=True)
                lora.unlink()
            src.unlink()
        print(f"{full.describe()}, {full_params / 1e9:.2f} B params: projected {full_params / rate / 60:.0f} min at "
              f"{rate / 1e6:.0f} Mparams/s, peak above baseline as measured ({max(results):.2f} GiB: streaming "
              f"holds one tensor at a time)")
        if len(results) > 1:
            print(f"peak above baseline, deepest vs shallowest: {results[-1] / results[0]:.3f}x "
                  f"(target <= 2 GiB each, within 10 %)")
    finally:
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
