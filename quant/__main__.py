"""Headless command line: ``python -m quant {convert,inspect,demo} ...`` (run from the pack's root)."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from . import codecs
from .arch import ArchitectureError, detect
from .atomic import check_target
from .checkpoint import CheckpointError, open_safetensors
from .gguf_file import GGUFWriteError, WriteResult, read_summary, write_gguf
from .costs import CostError, CostTable, accumulate, check_model, default_costs, model_fingerprint, resolve_costs
from .optimize import CARD_HEADROOM_GIB, Allocation, Target, TargetError, optimize, pareto
from .plan import allocation_json, table_model_shapes
from .recipe import Recipe, RecipeError, average_bpw, load_recipe, output_name, plan_tensors, save_recipe
from .imatrix import ImatrixError, load_imatrix
from .speed import SpeedError, SpeedProfile, load_speed

USER_ERRORS = (ArchitectureError, RecipeError, CheckpointError, GGUFWriteError, CostError, TargetError,
               SpeedError, ImatrixError, FileExistsError, FileNotFoundError, ValueError)


def convert(src: Path, out: Path | None, recipe: Recipe | None = None, qtype: str | None = None,
            overwrite: bool = False, device: str | None = None, quiet: bool = False,
            imatrix: Path | None = None) -> WriteResult:
    """safetensors -> GGUF with every block ``qtype``, or per ``recipe``; with an importance
    matrix file ``imatrix`` (of this model) where given."""
    importance = load_imatrix(imatrix) if imatrix else None
    with open_safetensors(src) as source:
        arch = detect(source.shapes)
        recipe = recipe or Recipe.uniform(arch, qtype or "Q8_0")
        plan = plan_tensors(arch, source.shapes, recipe)
        out = out or src.parent / output_name(src.name, average_bpw(plan))
        check_target(out, overwrite)  # before any work
        total = sum(t.numel for t in plan)
        with tqdm(total=total, unit="param", unit_scale=True, desc=out.name, disable=quiet) as bar:
            return write_gguf(source, arch, recipe, plan, out, overwrite=overwrite, device=device,
                              progress=lambda done, _total, _key: bar.update(done - bar.n),
                              imatrix=importance, imatrix_name=imatrix.name if imatrix else "")


def target_from(a: argparse.Namespace) -> Target | None:
    if a.bpw is None and a.size_gb is None and a.card_gb is None:
        return None
    return Target.of(a.bpw, a.size_gb, a.card_gb)


def costs_for(arch, source, spec: str | None) -> CostTable:
    """The costs to optimize with: the file given, else the built-in table of this model's shape."""
    fingerprint = model_fingerprint(arch, lambda k: source.read(arch.prefix + k))
    table = resolve_costs(spec) if spec else default_costs(fingerprint)
    if table is None:
        raise CostError(f"no built-in cost table fits {arch.describe()}; measure one with "
                        f"'python -m quant costs' and pass it with --costs")
    check_model(table, fingerprint)
    return table


def speed_for(a: argparse.Namespace) -> SpeedProfile | None:
    if a.max_slowdown is not None and not a.speed:
        raise ValueError("--max-slowdown needs --speed PROFILE (measure one with 'python -m quant speed')")
    return load_speed(a.speed) if a.speed else None


def allocate(arch, shapes, table: CostTable, target: Target, a: argparse.Namespace, name: str) -> Allocation:
    return optimize(arch, shapes, table.costs(), target, allowed=a.types, name=name, speed=speed_for(a),
                    max_slowdown=a.max_slowdown)


def describe_allocation(alloc: Allocation) -> str:
    text = f"{alloc.bpw:.3f} bits/param, predicted cost {alloc.predicted_cost:.4g}"
    if alloc.predicted_slowdown is not None:
        text += f", predicted step time {alloc.predicted_slowdown:.3f}x the unquantized model's"
    return text


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
    target = target_from(a)
    if target is not None:
        with open_safetensors(a.src, hash_file=False) as source:
            arch = detect(source.shapes)
            alloc = allocate(arch, source.shapes, costs_for(arch, source, a.costs), target, a, Path(a.src).stem)
        recipe = alloc.recipe
        print(f"recipe for {target.describe()}: {describe_allocation(alloc)}")
    elif a.type is None and recipe is None:
        raise ValueError("give --type, --recipe, or a target (--bpw, --size-gb, --card-gb)")
    elif a.speed or a.max_slowdown is not None:
        raise ValueError("--speed and --max-slowdown steer the optimizer: give a target (--bpw, --size-gb, --card-gb)")
    r = convert(Path(a.src), Path(a.output) if a.output else None, recipe, a.type, a.overwrite, a.device,
                imatrix=Path(a.imatrix) if a.imatrix else None)
    print(f"wrote {r.path} ({r.size_bytes / 2**20:.1f} MiB, {r.bpw:.3f} bits/param, {r.n_tensors} tensors)")
    return 0


def cmd_optimize(a: argparse.Namespace) -> int:
    target = target_from(a)
    if target is None:
        raise ValueError("give a target: --bpw, --size-gb or --card-gb")
    table = resolve_costs(a.costs)
    if a.model:
        with open_safetensors(a.model, hash_file=False) as source:
            arch, shapes = detect(source.shapes), dict(source.shapes)
            check_model(table, model_fingerprint(arch, lambda k: source.read(arch.prefix + k)))
    else:
        arch, shapes = table_model_shapes(table.model)
    if a.pareto:
        return print_frontier(arch, shapes, table, target, a)
    alloc = allocate(arch, shapes, table, target, a, a.name or "")
    if a.output:
        save_recipe(alloc.recipe, a.output)
    if a.json:
        print(json.dumps(allocation_json(alloc)))
    else:
        print(f"{target.describe()}: {describe_allocation(alloc)}, {alloc.data_bytes / 2**30:.2f} GiB of tensor data"
              + (f"; recipe written to {a.output}" if a.output else ""))
    return 0


def print_frontier(arch, shapes, table: CostTable, target: Target, a: argparse.Namespace) -> int:
    """What a faster file costs at this size: least cost at slowdowns from the fastest reachable
    to the unbudgeted optimum's."""
    speed = speed_for(a)
    if speed is None:
        raise ValueError("--pareto needs --speed PROFILE (measure one with 'python -m quant speed')")
    frontier = pareto(arch, shapes, table.costs(), target, speed, a.types, a.pareto)
    free = frontier[-1]
    rows = [{"predicted_slowdown": f.predicted_slowdown, "predicted_cost": f.predicted_cost, "bpw": f.bpw,
             "blocks": list(f.types)} for f in frontier]
    if a.json:
        print(json.dumps(rows))
        return 0
    print(f"{target.describe()} on {speed.device} ({speed.tokens} tokens, {speed.dequantizer} dequantize): "
          f"{len(frontier)} points, fastest first")
    print(" slowdown  dequant time  cost     cost vs unbudgeted  bits/param  types")
    for f in frontier:
        mix = ", ".join(f"{t} x{n}" for t, n in Counter(f.types).most_common())
        print(f" {f.predicted_slowdown:7.3f}x  {(f.predicted_slowdown - 1) / (free.predicted_slowdown - 1):11.0%}  "
              f"{f.predicted_cost:8.4g}  {f.predicted_cost / free.predicted_cost - 1:+17.1%}  {f.bpw:10.3f}  {mix}")
    return 0


def cmd_costs(a: argparse.Namespace) -> int:
    """Measure costs on synthetic samples with the reference FLUX blocks, adding to a costs file."""
    import torch

    from .flux_blocks import ReferenceStack
    from .sweep import add_to_table, sweep

    types = a.types or list(codecs.QUANTIZED_TYPE_NAMES)
    with open_safetensors(a.src, hash_file=False) as source:
        arch = detect(source.shapes)
        fingerprint = model_fingerprint(arch, lambda k: source.read(arch.prefix + k))
        dtype = getattr(torch, a.dtype)
        stack = ReferenceStack(arch, source, device=a.device or "cpu", dtype=dtype)
        importance = None
        if a.imatrix:
            imatrix = load_imatrix(a.imatrix)
            imatrix.check_model({arch.strip_prefix(k): s for k, s in source.shapes.items()})
            importance = imatrix.block_importance(arch.block_name)

        n_samples = len(a.inputs) if a.inputs else a.samples
        pending = stack_samples(a, stack, arch, {"dtype": a.dtype})
        with tqdm(total=n_samples * arch.n_blocks * len(types), unit="cost", desc="costs") as bar:
            # a sweep per --batch samples: each (block, type) is quantized once for all of them
            while group := list(itertools.islice(pending, a.batch)):
                result = sweep(stack, [inputs for inputs, _ in group], types,
                               progress=lambda done, _t, n=len(group): bar.update(n), importance=importance)
                table = CostTable.empty(fingerprint, arch.n_blocks, types)
                add_to_table(table, result)
                table.samples = [sample for _, sample in group]
                table.provenance = {"measured_with": "quant.flux_blocks (headless)", "checkpoint": Path(a.src).name}
                if a.imatrix:
                    table.provenance["imatrix"] = Path(a.imatrix).name
                accumulate(a.output, table)  # after every sweep: an interrupt keeps what was measured
    print(f"costs of {len(types)} types x {arch.n_blocks} blocks over {n_samples} sample(s) added to {a.output}")
    return 0


def stack_samples(a: argparse.Namespace, stack, arch, extra: dict) -> Iterator[tuple[object, dict]]:
    """(inputs, description) for the headless stack: the saved captures given, else synthetic
    samples (noised random latents at spread-out sigmas, random text states)."""
    from .flux_blocks import load_capture

    for path in a.inputs or []:
        inputs, sample = load_capture(path, arch.hidden_size)
        yield stack.prepare(inputs), {**sample, "capture": Path(path).name, **extra}
    for i in range(0 if a.inputs else a.samples):
        seed = a.seed + i
        sigma = 0.1 + 0.8 * ((seed * 0.618034) % 1.0)  # spread over the schedule
        yield (stack.make_inputs(seed, a.resolution, a.resolution, sigma),
               {"source": "synthetic", "seed": seed, "sigma": round(sigma, 4),
                "resolution": [a.resolution, a.resolution], **extra})


def cmd_imatrix(a: argparse.Namespace) -> int:
    """Collect an importance matrix headless: what enters each block weight, on saved captures
    (or synthetic samples), added to the file given."""
    import torch

    from .flux_blocks import ReferenceStack
    from .imatrix import Imatrix, add_to_file

    check_target(Path(a.output), overwrite=True)  # its folder, before any work; an existing file is added to
    with open_safetensors(a.src, hash_file=False) as source:
        arch = detect(source.shapes)
        stack = ReferenceStack(arch, source, device=a.device or "cpu")
        collected = Imatrix()
        n_samples = len(a.inputs) if a.inputs else a.samples
        with tqdm(total=n_samples, unit="sample", desc="imatrix") as bar, torch.no_grad():
            for inputs, sample in stack_samples(a, stack, arch, {}):
                state = stack.start(inputs)
                for b in range(arch.n_blocks):
                    state = stack.forward(b, state, inputs, collected.add)
                collected.chunk_count += 1
                name = sample.get("capture", "synthetic")
                if name not in collected.datasets:
                    collected.datasets.append(name)
                bar.update(1)
    total = add_to_file(a.output, collected)
    print(f"{collected.chunk_count} sample(s) added to {a.output}: {total.describe()}")
    return 0


def cmd_imatrix_convert(a: argparse.Namespace) -> int:
    """An importance matrix from one format to the other: llama.cpp's GGUF, stable-diffusion.cpp's .dat."""
    from .imatrix import save_imatrix, save_imatrix_dat

    imatrix = load_imatrix(a.file)
    save = save_imatrix_dat if a.output.endswith(".dat") else save_imatrix
    save(imatrix, a.output, a.overwrite)
    print(f"{a.file} -> {a.output}: {imatrix.describe()}")
    return 0


def cmd_speed(a: argparse.Namespace) -> int:
    """Measure a speed profile: per type, what dequantizing each weight costs per step on a device."""
    from .speed import find_comfyui_gguf, comfyui_gguf_dequantizer, measure, save_speed
    from .synthetic import FLUX1_DEV, flux_shapes

    check_target(Path(a.output), a.overwrite)  # before any work
    if a.model:
        with open_safetensors(a.model, hash_file=False) as source:
            shapes = dict(source.shapes)
    else:
        shapes = flux_shapes(FLUX1_DEV)
    arch = detect(shapes)
    module = find_comfyui_gguf([a.comfyui_gguf] if a.comfyui_gguf else [Path(__file__).resolve().parents[2]])
    if a.comfyui_gguf and module is None:
        raise FileNotFoundError(f"no ComfyUI-GGUF/dequant.py in {a.comfyui_gguf}")
    dequantizer, name = (comfyui_gguf_dequantizer(module), "ComfyUI-GGUF") if module else (None, "mxgguf")
    with tqdm(unit="step", desc=f"speed ({name} dequantize)") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        profile = measure(arch, shapes, a.device or "cpu", a.tokens, dequantizer=dequantizer,
                          dequantizer_name=name, progress=progress)
    save_speed(profile, a.output, a.overwrite)
    print(f"{profile.device}, {a.tokens} tokens: unquantized ({profile.dtype}) step "
          f"{profile.step_seconds(arch) * 1e3:.1f} ms for {arch.describe()}; profile written to {a.output}")
    return 0


def cmd_recipe(a: argparse.Namespace) -> int:
    """Import the original converter's casts, or export a recipe for llama.cpp / stable-diffusion.cpp."""
    import yaml

    from .recipe_formats import from_casts, llama_cpp_tensor_types, pick_configuration, sd_cpp_tensor_type_rules

    if a.action == "import":
        with open(a.file, encoding="utf-8") as f:
            name, config = pick_configuration(yaml.safe_load(f), a.name)
        recipe = from_casts(config, a.depth_double, a.depth_single, a.default, name)
        save_recipe(recipe, a.output)
        print(f"recipe {name or '(unnamed)'} written to {a.output}")
        return 0
    recipe = load_recipe(a.file)
    print("\n".join(llama_cpp_tensor_types(recipe)) if a.format == "llama.cpp" else sd_cpp_tensor_type_rules(recipe))
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    """Sum cost files measured on several runs or machines (same model only)."""
    from .costs import load_costs, save_costs

    total = load_costs(a.files[0])
    for path in a.files[1:]:
        total = total.merged(load_costs(path))
    save_costs(total, a.output)
    print(f"{len(a.files)} cost files, {len(total.samples)} samples, merged into {a.output}")
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


def add_target_arguments(p: argparse.ArgumentParser, group) -> None:
    group.add_argument("--bpw", type=float, help="target average bits per parameter (whole file)")
    group.add_argument("--size-gb", type=float, help="target file size in GB")
    group.add_argument("--card-gb", type=float,
                       help=f"fit a card of this many GB, leaving {CARD_HEADROOM_GIB:g} GiB for activations and the VAE")
    p.add_argument("--types", nargs="+", choices=codecs.QUANTIZED_TYPE_NAMES, help="allowed types (default: all with costs)")
    p.add_argument("--speed", metavar="PROFILE",
                   help="speed profile JSON ('python -m quant speed'): predicts the file's step time")
    p.add_argument("--max-slowdown", type=float, metavar="X",
                   help="predicted step time at most X times the unquantized model's, e.g. 1.3 (needs --speed)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quant", description="Mixed-quantization GGUF for FLUX.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="safetensors -> GGUF (one type, or a recipe)")
    c.add_argument("src", help="FLUX checkpoint (.safetensors, BFL/ComfyUI layout)")
    how = c.add_mutually_exclusive_group()
    how.add_argument("--type", choices=codecs.TYPE_NAMES, help="every block this type")
    how.add_argument("--recipe", help="recipe YAML (see recipes/README.md)")
    add_target_arguments(c, how)
    c.add_argument("--costs", help="costs file or builtin:NAME (default: the built-in table of the model's shape)")
    c.add_argument("-o", "--output", help="output .gguf (default: <model>_mxN_N.gguf beside the source)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    c.add_argument("--device", help="torch device for the codecs, e.g. cuda (default cpu)")
    c.add_argument("--imatrix", metavar="FILE",
                   help="importance matrix of this model (llama.cpp's GGUF imatrix format; 'python -m quant "
                        "imatrix' collects one): weights are quantized with ggml's importance-weighted paths")
    c.set_defaults(run=cmd_convert)
    i = sub.add_parser("inspect", help="type per block, size and bits per parameter of a GGUF")
    i.add_argument("file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(run=cmd_inspect)
    o = sub.add_parser("optimize", help="the least-cost recipe for a size target")
    o.add_argument("--costs", required=True, help="costs file or builtin:flux1-dev")
    add_target_arguments(o, o.add_mutually_exclusive_group(required=True))
    o.add_argument("--model", help="checkpoint to take shapes from (default: FLUX.1 widths)")
    o.add_argument("--name", help="recipe name")
    o.add_argument("-o", "--output", help="write the recipe YAML here")
    o.add_argument("--json", action="store_true",
                   help="print bpw, size_bytes, predicted_cost, blocks (and predicted_slowdown with --speed) as JSON")
    o.add_argument("--pareto", type=_positive, nargs="?", const=10, metavar="N",
                   help="print, for the size target, the least cost at N slowdowns (default 10) from the fastest "
                        "reachable to the unbudgeted optimum's (needs --speed)")
    o.set_defaults(run=cmd_optimize)
    m = sub.add_parser("costs", help="measure per-block costs headless and add them to a costs file")
    m.add_argument("src", help="FLUX checkpoint (.safetensors)")
    m.add_argument("-o", "--output", required=True, help="costs JSON (created, or added to)")
    m.add_argument("--samples", type=_positive, default=1, help="synthetic samples to measure on")
    m.add_argument("--inputs", nargs="+", metavar="CAPTURE",
                   help="measure on these saved captures (Capture Layer Costs with save_inputs) instead")
    m.add_argument("--types", nargs="+", choices=codecs.QUANTIZED_TYPE_NAMES, help="default: every quantized type")
    m.add_argument("--resolution", type=int, default=256, help="sample width and height in pixels")
    m.add_argument("--batch", type=_positive, default=8,
                   help="samples measured together: each block is quantized once per batch; their hidden "
                        "states are all kept (default 8)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--device", help="torch device, e.g. cuda")
    m.add_argument("--imatrix", metavar="FILE",
                   help="quantize with this importance matrix while measuring (the table records it; tables "
                        "measured with and without one are not merged)")
    m.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="block forwards in this dtype. bfloat16 is many times faster on a GPU and ranks blocks "
                        "and picks recipes as float32 does, but its own rounding adds to every cost (Q8_0's "
                        "about 2.7x at stock width): predicted costs run high (bench/forwards.py)")
    m.set_defaults(run=cmd_costs)
    x = sub.add_parser("imatrix", help="collect an importance matrix headless (llama.cpp's GGUF imatrix format)")
    x.add_argument("src", help="FLUX checkpoint (.safetensors)")
    x.add_argument("-o", "--output", required=True, help="imatrix GGUF (created, or added to)")
    x.add_argument("--inputs", nargs="+", metavar="CAPTURE",
                   help="saved captures (Capture Layer Costs with save_inputs); default: synthetic samples")
    x.add_argument("--samples", type=_positive, default=1, help="synthetic samples, without --inputs")
    x.add_argument("--resolution", type=int, default=256, help="synthetic sample width and height in pixels")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--device", help="torch device, e.g. cuda")
    x.set_defaults(run=cmd_imatrix)
    xc = sub.add_parser("imatrix-convert", help="an importance matrix to the other format (GGUF <-> .dat)")
    xc.add_argument("file", help="importance matrix: llama.cpp's GGUF or stable-diffusion.cpp's .dat")
    xc.add_argument("-o", "--output", required=True, help="*.dat: stable-diffusion.cpp's format; else GGUF")
    xc.add_argument("--overwrite", action="store_true")
    xc.set_defaults(run=cmd_imatrix_convert)
    v = sub.add_parser("speed", help="measure what each type costs per sampling step on a device")
    v.add_argument("-o", "--output", required=True, help="speed profile JSON to write")
    v.add_argument("--overwrite", action="store_true", help="replace an existing profile")
    v.add_argument("--device", help="torch device, e.g. cuda (default cpu)")
    v.add_argument("--tokens", type=_positive, default=4608,
                   help="tokens per sample the blocks see (4608: 1024x1024 with 512 text tokens)")
    v.add_argument("--model", help="checkpoint whose weight shapes to measure (default: FLUX.1-dev's)")
    v.add_argument("--comfyui-gguf", metavar="FOLDER",
                   help="folder holding ComfyUI-GGUF, whose dequantize functions are timed (default: the "
                        "folder this pack sits in, if it has ComfyUI-GGUF; else this pack's own)")
    v.set_defaults(run=cmd_speed)
    g = sub.add_parser("merge", help="sum cost files from several runs or machines (same model)")
    g.add_argument("files", nargs="+", help="costs JSON files")
    g.add_argument("-o", "--output", required=True)
    g.set_defaults(run=cmd_merge)
    r = sub.add_parser("recipe", help="import the original converter's casts; export rules for llama.cpp / sd.cpp")
    rsub = r.add_subparsers(dest="action", required=True)
    ri = rsub.add_parser("import", help="configurations.yaml (casts: castto/layers) -> recipe YAML")
    ri.add_argument("file")
    ri.add_argument("-o", "--output", required=True)
    ri.add_argument("--name", help="which configuration, when the file holds several")
    ri.add_argument("--default", default="BF16", help="type of blocks no cast names (default BF16)")
    ri.add_argument("--depth-double", type=int, default=19)
    ri.add_argument("--depth-single", type=int, default=38)
    re_ = rsub.add_parser("export", help="recipe YAML -> llama-quantize --tensor-type options or sd.cpp rules")
    re_.add_argument("file")
    re_.add_argument("--format", choices=["llama.cpp", "sd.cpp"], default="llama.cpp")
    r.set_defaults(run=cmd_recipe)
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
