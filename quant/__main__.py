"""Headless command line: ``python -m quant {convert,inspect,demo} ...`` (run from the pack's root)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from . import codecs
from .arch import ArchitectureError, detect
from .atomic import check_target
from .checkpoint import CheckpointError, open_safetensors
from .gguf_file import GGUFWriteError, WriteResult, read_summary, write_gguf
from .recipe import Recipe, RecipeError, average_bpw, load_recipe, output_name, plan_tensors

USER_ERRORS = (ArchitectureError, RecipeError, CheckpointError, GGUFWriteError,
               FileExistsError, FileNotFoundError, ValueError)


def convert(src: Path, out: Path | None, recipe: Recipe | None = None, qtype: str | None = None,
            overwrite: bool = False, device: str | None = None, quiet: bool = False) -> WriteResult:
    """safetensors -> GGUF with every block ``qtype``, or per ``recipe``."""
    with open_safetensors(src) as source:
        arch = detect(source.shapes)
        recipe = recipe or Recipe.uniform(arch, qtype or "Q8_0")
        plan = plan_tensors(arch, source.shapes, recipe)
        out = out or src.parent / output_name(src.name, average_bpw(plan))
        check_target(out, overwrite)  # before any work
        total = sum(t.numel for t in plan)
        with tqdm(total=total, unit="param", unit_scale=True, desc=out.name, disable=quiet) as bar:
            return write_gguf(source, arch, recipe, plan, out, overwrite=overwrite, device=device,
                              progress=lambda done, _total, _key: bar.update(done - bar.n))


def format_summary(s: dict) -> str:
    lines = [f"{s['file']}: {s['arch']}, {s['n_tensors']} tensors, {s['params'] / 1e6:.1f} M params, "
             f"{s['size_bytes'] / 2**20:.1f} MiB, {s['bpw']:.3f} bits/param"]
    runs: list[tuple[int, int, str]] = []  # consecutive blocks of one type
    for i, t in enumerate(s["blocks"]):
        if runs and runs[-1][2] == t:
            runs[-1] = (runs[-1][0], i, t)
        else:
            runs.append((i, i, t))
    lines += [f"  blocks {a}-{b}: {t}" if a != b else f"  block {a}: {t}" for a, b, t in runs]
    lines += [f"  {t}: {n / 1e6:.1f} M params" for t, n in sorted(s["type_params"].items())]
    return "\n".join(lines)


def cmd_convert(a: argparse.Namespace) -> int:
    recipe = load_recipe(a.recipe) if a.recipe else None
    r = convert(Path(a.src), Path(a.output) if a.output else None, recipe, a.type, a.overwrite, a.device)
    print(f"wrote {r.path} ({r.size_bytes / 2**20:.1f} MiB, {r.bpw:.3f} bits/param, {r.n_tensors} tensors)")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    s = read_summary(a.file)
    print(json.dumps(s, indent=1, default=str) if a.json else format_summary(s))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Make a small random FLUX checkpoint, convert it with a mixed recipe, read it back."""
    from safetensors.torch import save_file

    from .synthetic import TINY, flux_shapes, random_state_dict

    folder = Path(a.dir or tempfile.mkdtemp(prefix="mxgguf-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "tiny-flux.safetensors"
    save_file(random_state_dict(TINY), str(src))
    arch = detect(flux_shapes(TINY))
    ladder = ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "IQ4_XS", "Q4_K"]  # more bits where FLUX is most sensitive
    types = tuple(ladder[min(i * len(ladder) // arch.n_blocks, len(ladder) - 1)] for i in range(arch.n_blocks))
    recipe = Recipe(types, arch.depth_double, arch.depth_single, name="demo ladder")
    print(f"source: {src} ({arch.describe()})")
    r = convert(src, None, recipe, overwrite=True)
    print(format_summary(read_summary(r.path)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quant", description="Mixed-quantization GGUF for FLUX.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="safetensors -> GGUF (one type, or a recipe)")
    c.add_argument("src", help="FLUX checkpoint (.safetensors, BFL/ComfyUI layout)")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--type", choices=codecs.TYPE_NAMES, help="every block this type")
    how.add_argument("--recipe", help="recipe YAML (see recipes/README.md)")
    c.add_argument("-o", "--output", help="output .gguf (default: <model>_mxN_N.gguf beside the source)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    c.add_argument("--device", help="torch device for the codecs, e.g. cuda (default cpu)")
    c.set_defaults(run=cmd_convert)
    i = sub.add_parser("inspect", help="type per block, size and bits per parameter of a GGUF")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(run=cmd_inspect)
    d = sub.add_parser("demo", help="convert a small random FLUX-layout model end to end")
    d.add_argument("--dir", help="folder for the demo files (default: a new temp folder)")
    d.set_defaults(run=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.run(a)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
