"""Headless command line: ``python -m quant COMMAND ...`` (run from the pack's root; ``--help`` lists them)."""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from . import codecs
from .models import DEFAULT_MODEL, FAMILIES, NAMED_CONFIGS, ArchitectureError, Model, detect, named_model
from .atomic import check_target
from .checkpoint import CheckpointError, Source, open_safetensors
from .encode import write_gguf
from .gguf_file import GGUFWriteError, WriteResult, read_summary
from .costs import (CostError, CostTable, accumulate, check_model, default_costs, model_fingerprint, noting_costs,
                    resolve_costs, save_costs)
from .optimize import CARD_HEADROOM_GIB, Allocation, Target, TargetError, optimize, pareto
from .plan import allocation_json
from .recipe import Recipe, RecipeError, load_recipe, save_recipe
from .tensor_plan import average_bpw, output_name, plan_tensors
from .imatrix import ImatrixError, load_imatrix
from .lora import LoraError, LoraSpec, baked_in
from .patches import BakedLora, describe_loras, loras_metadata, parse_loras
from .speed import SpeedError, SpeedProfile, load_speed

ESTIMATE = "estimate"  # --costs: estimate from the checkpoint's weights
USER_ERRORS = (ArchitectureError, RecipeError, CheckpointError, GGUFWriteError, CostError, TargetError,
               SpeedError, ImatrixError, FileExistsError, FileNotFoundError, ValueError)


def convert(src: Path, out: Path | None, recipe: Recipe | None = None, qtype: str | None = None,
            overwrite: bool = False, device: str | None = None, quiet: bool = False,
            imatrix: Path | None = None, loras: Sequence[LoraSpec] = ()) -> WriteResult:
    """safetensors -> GGUF with every block ``qtype``, or per ``recipe``; with an importance
    matrix file ``imatrix`` (of this model) where given, and ``loras`` baked in."""
    importance = load_imatrix(imatrix) if imatrix else None
    with checkpoint(src, loras, device) as (source, model, baked):
        recipe = recipe or Recipe.uniform(model, qtype or "Q8_0")
        plan = plan_tensors(model, source.shapes, recipe)
        out = out or src.parent / output_name(src.name, average_bpw(plan))
        check_target(out, overwrite)  # before any work
        total = sum(t.numel for t in plan)
        with tqdm(total=total, unit="param", unit_scale=True, desc=out.name, disable=quiet) as bar:
            return write_gguf(source, recipe, plan, out, overwrite=overwrite, device=device,
                              progress=lambda done, _total, _key: bar.update(done - bar.n),
                              imatrix=importance, imatrix_name=imatrix.name if imatrix else "",
                              extra_metadata=loras_metadata(baked))


@contextlib.contextmanager
def checkpoint(src: Path, loras: Sequence[LoraSpec] = (), device: str | None = None,
               hash_file: bool = True) -> Iterator[tuple[Source, Model, list[BakedLora]]]:
    """The checkpoint read tensor by tensor, its model, and the LoRAs baked in as it is read."""
    with open_safetensors(src, hash_file) as source:
        model = detect(source.shapes)
        with baked_in(source, model, loras, device) as (patched, baked):
            yield patched, model, baked


def target_from(args: argparse.Namespace) -> Target | None:
    if args.bpw is None and args.size_gb is None and args.card_gb is None:
        return None
    return Target.of(args.bpw, args.size_gb, args.card_gb)


def costs_for(model: Model, source, spec: str | None, imatrix: Path | None = None) -> CostTable:
    """The costs to optimize with: the file given, else the built-in table of this model's shape,
    else (or given ``estimate``) an estimate from the checkpoint's weights."""
    fingerprint = model_fingerprint(model, source)
    if spec == ESTIMATE:
        table, why = None, "as asked"
    else:
        table = resolve_costs(spec) if spec else default_costs(fingerprint)
        why = f"no built-in table fits {model.describe()}"
    if table is None:
        logging.getLogger(__package__).info(
            "costs: estimated from the weights of %s (%s); measured costs pick better recipes", source.name, why)
        return estimate_with_progress(model, source, imatrix)
    check_model(table, fingerprint)
    return table


def estimate_with_progress(model: Model, source, imatrix: Path | None = None,
                           types: Sequence[str] = codecs.QUANTIZED_TYPE_NAMES) -> CostTable:
    from .estimate import estimate_costs

    importance = load_imatrix(imatrix) if imatrix else None
    with tqdm(unit="weight", desc="estimating costs") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return estimate_costs(model, source, types, importance, imatrix.name if imatrix else "", progress=progress)


def speed_for(args: argparse.Namespace) -> SpeedProfile | None:
    if args.max_slowdown is not None and not args.speed:
        raise ValueError("--max-slowdown needs --speed PROFILE (measure one with 'python -m quant speed')")
    return load_speed(args.speed) if args.speed else None


def allocate(model: Model, shapes, table: CostTable, target: Target, args: argparse.Namespace,
             name: str) -> Allocation:
    return optimize(model, shapes, table.costs(), target, allowed=args.types, name=name, speed=speed_for(args),
                    max_slowdown=args.max_slowdown)


def describe_allocation(alloc: Allocation, table: CostTable) -> str:
    cost = "estimated cost (weight error)" if table.estimated else "predicted cost"
    text = f"{alloc.bpw:.3f} bits/param, {cost} {alloc.predicted_cost:.4g}"
    if alloc.predicted_slowdown is not None:
        text += f", predicted step time {alloc.predicted_slowdown:.3f}x the unquantized model's"
    return text


def format_summary(s: dict) -> str:
    lines = [f"{s['file']}: {s['model']}, {s['n_tensors']} tensors, {s['params'] / 1e6:.1f} M params, "
             f"{s['size_bytes'] / 2**20:.1f} MiB, {s['bpw']:.3f} bits/param"]
    runs: list[tuple[int, int, str]] = []  # consecutive blocks of one type
    for i, t in enumerate(s["blocks"]):
        if runs and runs[-1][2] == t:
            runs[-1] = (runs[-1][0], i, t)
        else:
            runs.append((i, i, t))
    lines += [f"  blocks {a}-{b}: {t}" if a != b else f"  block {a}: {t}" for a, b, t in runs]
    lines += [f"  {t}: {n / 1e6:.1f} M params" for t, n in sorted(s["type_params"].items())]
    if s.get("costs"):
        lines.append(f"  recipe chosen by costs: {s['costs']}")
    if s["loras"]:
        lines.append(f"  LoRAs baked in: {describe_loras(parse_loras(s['loras']))}")
    return "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe) if args.recipe else None
    target = target_from(args)
    loras = [LoraSpec.parse(text) for text in args.lora or ()]
    if target is not None:
        with checkpoint(Path(args.src), loras, args.device, hash_file=False) as (source, model, baked):
            table = costs_for(model, source, args.costs, Path(args.imatrix) if args.imatrix else None)
            alloc = allocate(model, source.shapes, table, target, args, Path(args.src).stem)
        if note := table.other_loras(baked):
            logging.getLogger(__package__).info("%s; this file bakes in %s", note, describe_loras(baked))
        recipe = noting_costs(alloc.recipe, table, args.costs or 'built-in table')
        print(f"recipe for {target.describe()}: {describe_allocation(alloc, table)}")
    elif args.type is None and recipe is None:
        raise ValueError("give --type, --recipe, or a target (--bpw, --size-gb, --card-gb)")
    elif args.speed or args.max_slowdown is not None:
        raise ValueError("--speed and --max-slowdown steer the optimizer: give a target (--bpw, --size-gb, --card-gb)")
    r = convert(Path(args.src), Path(args.output) if args.output else None, recipe, args.type, args.overwrite,
                args.device, imatrix=Path(args.imatrix) if args.imatrix else None, loras=loras)
    print(f"wrote {r.path} ({r.size_bytes / 2**20:.1f} MiB, {r.bpw:.3f} bits/param, {r.n_tensors} tensors)")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    target = target_from(args)
    if target is None:
        raise ValueError("give a target: --bpw, --size-gb or --card-gb")
    table = resolve_costs(args.costs)
    if args.model in NAMED_CONFIGS:
        model = named_model(args.model)
        check_model(table, model.fingerprint())
        shapes = model.shapes()
    elif args.model:
        with open_safetensors(args.model, hash_file=False) as source:
            model, shapes = detect(source.shapes), dict(source.shapes)
            check_model(table, model_fingerprint(model, source))
    else:
        model = table.family_model
        shapes = model.shapes()
    if args.pareto:
        return print_frontier(model, shapes, table, target, args)
    alloc = allocate(model, shapes, table, target, args, args.name or "")
    if args.output:
        save_recipe(noting_costs(alloc.recipe, table, args.costs or 'built-in table'), args.output)
    if args.json:
        print(json.dumps(allocation_json(alloc)))
    else:
        print(f"{target.describe()}: {describe_allocation(alloc, table)}, {alloc.data_bytes / 2**30:.2f} GiB of tensor data"
              + (f"; recipe written to {args.output}" if args.output else ""))
    return 0


def print_frontier(model: Model, shapes, table: CostTable, target: Target, args: argparse.Namespace) -> int:
    """What a faster file costs at this size: least cost at slowdowns from the fastest reachable
    to the unbudgeted optimum's."""
    speed = speed_for(args)
    if speed is None:
        raise ValueError("--pareto needs --speed PROFILE (measure one with 'python -m quant speed')")
    frontier = pareto(model, shapes, table.costs(), target, speed, args.types, args.pareto)
    free = frontier[-1]
    rows = [{"predicted_slowdown": f.predicted_slowdown, "predicted_cost": f.predicted_cost, "bpw": f.bpw,
             "blocks": list(f.types)} for f in frontier]
    if args.json:
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


def cmd_costs(args: argparse.Namespace) -> int:
    """Measure costs on synthetic samples with the family's reference blocks, adding to a costs file."""
    import torch

    from .sweep import sweep

    types = args.types or list(codecs.QUANTIZED_TYPE_NAMES)
    with open_safetensors(args.src, hash_file=False) as source:
        model = detect(source.shapes)
        fingerprint = model_fingerprint(model, source)
        dtype = getattr(torch, args.dtype)
        stack = model.family.reference_stack(model, source, device=args.device or "cpu", dtype=dtype)
        importance = None
        if args.imatrix:
            imatrix = load_imatrix(args.imatrix)
            imatrix.check_model({model.strip_prefix(k): s for k, s in source.shapes.items()})
            importance = imatrix.block_importance(model.block_name)

        provenance = {"measured_with": f"{type(stack).__module__} (headless)", "checkpoint": Path(args.src).name}
        if args.imatrix:
            provenance["imatrix"] = Path(args.imatrix).name

        n_samples = len(args.inputs) if args.inputs else args.samples
        pending = stack_samples(args, stack, {"dtype": args.dtype})
        with tqdm(total=n_samples * model.n_blocks * len(types), unit="cost", desc="costs") as bar:
            # a sweep per --batch samples: each (block, type) is quantized once for all of them
            while group := list(itertools.islice(pending, args.batch)):
                result = sweep(stack, [inputs for inputs, _ in group], types,
                               progress=lambda done, _t, n=len(group): bar.update(n), importance=importance)
                accumulate(args.output, result.table(  # after every sweep: an interrupt keeps what was measured
                    fingerprint, model.n_blocks, types, [sample for _, sample in group], provenance))
    print(f"costs of {len(types)} types x {model.n_blocks} blocks over {n_samples} sample(s) added to {args.output}")
    return 0


def stack_samples(args: argparse.Namespace, stack, extra: dict) -> Iterator[tuple[object, dict]]:
    """(inputs, description) for the headless stack: the saved captures given, else synthetic
    samples (noised random latents at spread-out sigmas, random text states)."""
    from .capture_file import load_capture

    for path in args.inputs or []:
        inputs, sample = load_capture(path, stack.width)
        yield stack.prepare(inputs), {**sample, "capture": Path(path).name, **extra}
    for i in range(0 if args.inputs else args.samples):
        seed = args.seed + i
        sigma = 0.1 + 0.8 * ((seed * 0.618034) % 1.0)  # spread over the schedule
        yield (stack.make_inputs(seed, args.resolution, args.resolution, sigma),
               {"source": "synthetic", "seed": seed, "sigma": round(sigma, 4),
                "resolution": [args.resolution, args.resolution], **extra})


def cmd_estimate(args: argparse.Namespace) -> int:
    """Estimate costs from a checkpoint's weights alone (no forward runs), as a costs file."""
    check_target(Path(args.output), args.overwrite)
    with open_safetensors(args.src, hash_file=False) as source:
        model = detect(source.shapes)
        table = estimate_with_progress(model, source, Path(args.imatrix) if args.imatrix else None,
                                       args.types or codecs.QUANTIZED_TYPE_NAMES)
    save_costs(table, args.output)
    print(f"estimated costs of {len(table.types)} types x {model.n_blocks} blocks of {model.describe()} written "
          f"to {args.output}")
    return 0


def cmd_imatrix(args: argparse.Namespace) -> int:
    """Collect an importance matrix headless: what enters each block weight, on saved captures
    (or synthetic samples), added to the file given."""
    import torch

    from .imatrix import Imatrix, add_to_file

    check_target(Path(args.output), overwrite=True)  # its folder, before any work; an existing file is added to
    with open_safetensors(args.src, hash_file=False) as source:
        model = detect(source.shapes)
        stack = model.family.reference_stack(model, source, device=args.device or "cpu")
        collected = Imatrix()
        n_samples = len(args.inputs) if args.inputs else args.samples
        with tqdm(total=n_samples, unit="sample", desc="imatrix") as bar, torch.no_grad():
            for inputs, sample in stack_samples(args, stack, {}):
                state = stack.start(inputs)
                for b in range(model.n_blocks):
                    state = stack.forward(b, state, inputs, collected.add)
                collected.chunk_count += 1
                name = sample.get("capture", "synthetic")
                if name not in collected.datasets:
                    collected.datasets.append(name)
                bar.update(1)
    total = add_to_file(args.output, collected)
    print(f"{collected.chunk_count} sample(s) added to {args.output}: {total.describe()}")
    return 0


def cmd_imatrix_convert(args: argparse.Namespace) -> int:
    """An importance matrix from one format to the other: llama.cpp's GGUF, stable-diffusion.cpp's .dat."""
    from .imatrix import save_imatrix, save_imatrix_dat

    imatrix = load_imatrix(args.file)
    save = save_imatrix_dat if args.output.endswith(".dat") else save_imatrix
    save(imatrix, args.output, args.overwrite)
    print(f"{args.file} -> {args.output}: {imatrix.describe()}")
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    """Measure a speed profile: per type, what dequantizing each weight costs per step on a device."""
    from .speed import find_comfyui_gguf, comfyui_gguf_dequantizer, measure, save_speed

    check_target(Path(args.output), args.overwrite)  # before any work
    if args.model in NAMED_CONFIGS:
        model = named_model(args.model)
        shapes = model.shapes()
    else:
        with open_safetensors(args.model, hash_file=False) as source:
            shapes = dict(source.shapes)
        model = detect(shapes)
    tokens = args.tokens or model.family.reference_tokens
    module = find_comfyui_gguf([args.comfyui_gguf] if args.comfyui_gguf else [Path(__file__).resolve().parents[2]])
    if args.comfyui_gguf and module is None:
        raise FileNotFoundError(f"no ComfyUI-GGUF/dequant.py in {args.comfyui_gguf}")
    dequantizer, name = (comfyui_gguf_dequantizer(module), "ComfyUI-GGUF") if module else (None, "mxgguf")
    with tqdm(unit="step", desc=f"speed ({name} dequantize)") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        profile = measure(model, shapes, args.device or "cpu", tokens, dequantizer=dequantizer,
                          dequantizer_name=name, progress=progress)
    save_speed(profile, args.output, args.overwrite)
    print(f"{profile.device}, {tokens} tokens: unquantized ({profile.dtype}) step "
          f"{profile.step_seconds(model) * 1e3:.1f} ms for {model.describe()}; profile written to {args.output}")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    """Import mixed-gguf-converter's casts, or export a recipe for llama.cpp / stable-diffusion.cpp."""
    import yaml

    from .recipe_formats import from_casts, llama_cpp_tensor_types, pick_configuration, sd_cpp_tensor_type_rules

    if args.action == "import":
        with open(args.file, encoding="utf-8") as f:
            name, config = pick_configuration(yaml.safe_load(f), args.name)
        recipe = from_casts(config, named_model(args.model), args.default, name)
        save_recipe(recipe, args.output)
        print(f"recipe {name or '(unnamed)'} written to {args.output}")
        return 0
    recipe = load_recipe(args.file)
    print("\n".join(llama_cpp_tensor_types(recipe)) if args.format == "llama.cpp" else sd_cpp_tensor_type_rules(recipe))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Sum cost files measured on several runs or machines (same model only)."""
    from .costs import load_costs, save_costs

    total = load_costs(args.files[0])
    for path in args.files[1:]:
        total = total.merged(load_costs(path))
    save_costs(total, args.output)
    print(f"{len(args.files)} cost files, {len(total.samples)} samples, merged into {args.output}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    s = read_summary(args.file)
    print(json.dumps(s, indent=1, default=str) if args.json else format_summary(s))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Make a small random checkpoint of a family, convert it with a mixed recipe, read it back."""
    from safetensors.torch import save_file

    from .models import family
    from .synthetic import random_state_dict

    folder = Path(args.dir or tempfile.mkdtemp(prefix="mxgguf-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    fam = family(args.family)
    model = Model(fam, fam.tiny)
    src = folder / f"tiny-{fam.name}.safetensors"
    save_file(random_state_dict(model), str(src))
    ladder = ["Q8_0", "Q6_K", "Q5_K", "Q5_1", "IQ4_XS", "Q4_K"]  # more bits where early blocks are most sensitive
    types = [ladder[min(i * len(ladder) // model.n_blocks, len(ladder) - 1)] for i in range(model.n_blocks)]
    recipe = Recipe.for_model(model, types, name="demo ladder")
    print(f"source: {src} ({model.describe()})")
    r = convert(src, None, recipe, overwrite=True)
    print(format_summary(read_summary(r.path)))
    return 0


def add_target_arguments(p: argparse.ArgumentParser, group) -> None:
    group.add_argument("--bpw", type=float, help="target average bits per parameter (whole file)")
    group.add_argument("--size-gb", type=float, help="target file size in GB")
    group.add_argument("--card-gb", type=float,
                       help=f"fit a card of this many GB, leaving {CARD_HEADROOM_GIB:g} GiB for activations "
                            f"and the VAE")
    p.add_argument("--types", nargs="+", choices=codecs.QUANTIZED_TYPE_NAMES,
                   help="allowed types (default: all with costs)")
    p.add_argument("--speed", metavar="PROFILE",
                   help="speed profile JSON ('python -m quant speed'): predicts the file's step time")
    p.add_argument("--max-slowdown", type=float, metavar="X",
                   help="predicted step time at most X times the unquantized model's, e.g. 1.3 (needs --speed)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_output_argument(cmd: argparse.ArgumentParser, what: str, *, required: bool = True,
                        overwrite: str | None = None) -> None:
    """``-o/--output`` (``what`` is its help) and, where an existing file may be replaced, ``--overwrite``."""
    cmd.add_argument("-o", "--output", required=required, help=what)
    if overwrite is not None:
        cmd.add_argument("--overwrite", action="store_true", help=overwrite)


def add_device_argument(cmd: argparse.ArgumentParser, what: str = "torch device, e.g. cuda (default cpu)") -> None:
    cmd.add_argument("--device", help=what)


def add_sample_arguments(cmd: argparse.ArgumentParser) -> None:
    """The checkpoint and the samples ``stack_samples`` gives: saved captures, else synthetic ones."""
    cmd.add_argument("src", help="checkpoint (.safetensors) of a family with reference blocks (FLUX.1)")
    cmd.add_argument("--inputs", nargs="+", metavar="CAPTURE",
                     help="saved captures (Capture Layer Costs with save_inputs); default: synthetic samples")
    cmd.add_argument("--samples", type=_positive, default=1, help="synthetic samples, without --inputs")
    cmd.add_argument("--resolution", type=int, default=256, help="synthetic sample width and height in pixels")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the first synthetic sample")
    add_device_argument(cmd)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m quant", description="Mixed-quantization GGUF for diffusion transformers.")
    sub = p.add_subparsers(dest="command", required=True)
    convert_cmd = sub.add_parser("convert", help="safetensors -> GGUF (one type, or a recipe)")
    convert_cmd.add_argument("src", help="checkpoint (.safetensors, ComfyUI's single-file layout) of a known family")
    how = convert_cmd.add_mutually_exclusive_group()
    how.add_argument("--type", choices=codecs.TYPE_NAMES, help="every block this type")
    how.add_argument("--recipe", help="recipe YAML (see recipes/README.md)")
    add_target_arguments(convert_cmd, how)
    convert_cmd.add_argument("--costs",
                             help="costs file, builtin:NAME or 'estimate' (default: the built-in table of the model's "
                                  "shape, else an estimate from the checkpoint's weights)")
    add_output_argument(convert_cmd, "output .gguf (default: <model>_mxN_N.gguf beside the source)", required=False,
                        overwrite="replace an existing output file")
    add_device_argument(convert_cmd, "torch device for the codecs, e.g. cuda (default cpu)")
    convert_cmd.add_argument("--imatrix", metavar="FILE",
                             help="importance matrix of this model (llama.cpp's GGUF imatrix format; 'python -m quant "
                                  "imatrix' collects one): weights are quantized with ggml's importance-weighted paths")
    convert_cmd.add_argument("--lora", action="append", metavar="FILE[:STRENGTH]",
                             help="bake this LoRA in before quantizing (strength default 1; repeat for several, "
                                  "applied in order); keys as ComfyUI's generic or kohya's LoRAs name the "
                                  "checkpoint's tensors")
    convert_cmd.set_defaults(run=cmd_convert)
    inspect_cmd = sub.add_parser("inspect", help="type per block, size and bits per parameter of a GGUF")
    inspect_cmd.add_argument("file")
    inspect_cmd.add_argument("--json", action="store_true")
    inspect_cmd.set_defaults(run=cmd_inspect)
    optimize_cmd = sub.add_parser("optimize", help="the least-cost recipe for a size target")
    optimize_cmd.add_argument("--costs", required=True, help="costs file or builtin:NAME")
    add_target_arguments(optimize_cmd, optimize_cmd.add_mutually_exclusive_group(required=True))
    optimize_cmd.add_argument("--model", metavar="NAME|CHECKPOINT",
                              help=f"a named configuration ({', '.join(NAMED_CONFIGS)}) or a checkpoint to take "
                                   f"shapes from (default: the costs table's model)")
    optimize_cmd.add_argument("--name", help="recipe name")
    add_output_argument(optimize_cmd, "write the recipe YAML here", required=False)
    optimize_cmd.add_argument("--json", action="store_true",
                              help="print bpw, size_bytes, predicted_cost, blocks (and predicted_slowdown with "
                                   "--speed) as JSON")
    optimize_cmd.add_argument("--pareto", type=_positive, nargs="?", const=10, metavar="N",
                              help="print, for the size target, the least cost at N slowdowns (default 10) from the "
                                   "fastest reachable to the unbudgeted optimum's (needs --speed)")
    optimize_cmd.set_defaults(run=cmd_optimize)
    costs_cmd = sub.add_parser("costs", help="measure per-block costs headless and add them to a costs file")
    add_sample_arguments(costs_cmd)
    add_output_argument(costs_cmd, "costs JSON (created, or added to)")
    costs_cmd.add_argument("--types", nargs="+", choices=codecs.QUANTIZED_TYPE_NAMES,
                           help="default: every quantized type")
    costs_cmd.add_argument("--batch", type=_positive, default=8,
                           help="samples measured together: each block is quantized once per batch; their hidden "
                                "states are all kept (default 8)")
    costs_cmd.add_argument("--imatrix", metavar="FILE",
                           help="quantize with this importance matrix while measuring (the table records it; tables "
                                "measured with and without one are not merged)")
    costs_cmd.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                           help="block forwards in this dtype. bfloat16 is many times faster on a GPU and ranks blocks "
                                "and picks recipes as float32 does, but its own rounding adds to every cost (Q8_0's "
                                "about 2.7x at stock width): predicted costs run high (bench/forwards.py)")
    costs_cmd.set_defaults(run=cmd_costs)
    estimate_cmd = sub.add_parser("estimate", help="estimate per-block costs from a checkpoint's weights alone "
                                                   "(any family; seconds; measured costs pick better recipes)")
    estimate_cmd.add_argument("src", help="checkpoint (.safetensors) of a known family")
    add_output_argument(estimate_cmd, "costs JSON to write", overwrite="replace an existing file")
    estimate_cmd.add_argument("--types", nargs="+", choices=codecs.QUANTIZED_TYPE_NAMES,
                              help="default: every quantized type")
    estimate_cmd.add_argument("--imatrix", metavar="FILE",
                              help="weigh each weight's column errors by this importance matrix's mean squares")
    estimate_cmd.set_defaults(run=cmd_estimate)
    imatrix_cmd = sub.add_parser("imatrix",
                                 help="collect an importance matrix headless (llama.cpp's GGUF imatrix format)")
    add_sample_arguments(imatrix_cmd)
    add_output_argument(imatrix_cmd, "imatrix GGUF (created, or added to)")
    imatrix_cmd.set_defaults(run=cmd_imatrix)
    imatrix_convert_cmd = sub.add_parser("imatrix-convert",
                                         help="an importance matrix to the other format (GGUF <-> .dat)")
    imatrix_convert_cmd.add_argument("file", help="importance matrix: llama.cpp's GGUF or stable-diffusion.cpp's .dat")
    add_output_argument(imatrix_convert_cmd, "*.dat: stable-diffusion.cpp's format; else GGUF",
                        overwrite="replace an existing file")
    imatrix_convert_cmd.set_defaults(run=cmd_imatrix_convert)
    speed_cmd = sub.add_parser("speed", help="measure what each type costs per sampling step on a device")
    add_output_argument(speed_cmd, "speed profile JSON to write", overwrite="replace an existing profile")
    add_device_argument(speed_cmd)
    speed_cmd.add_argument("--tokens", type=_positive,
                           help="tokens per sample the blocks see (default: the family's usual size, e.g. FLUX.1's "
                                "4608 at 1024x1024 with 512 of text)")
    speed_cmd.add_argument("--model", metavar="NAME|CHECKPOINT", default=DEFAULT_MODEL,
                           help=f"a named configuration ({', '.join(NAMED_CONFIGS)}) or a checkpoint whose weight "
                                f"shapes to measure (default {DEFAULT_MODEL})")
    speed_cmd.add_argument("--comfyui-gguf", metavar="FOLDER",
                           help="folder holding ComfyUI-GGUF, whose dequantize functions are timed (default: the "
                                "folder this pack sits in, if it has ComfyUI-GGUF; else this pack's own)")
    speed_cmd.set_defaults(run=cmd_speed)
    merge_cmd = sub.add_parser("merge", help="sum cost files from several runs or machines (same model)")
    merge_cmd.add_argument("files", nargs="+", help="costs JSON files")
    add_output_argument(merge_cmd, "costs JSON holding the sum")
    merge_cmd.set_defaults(run=cmd_merge)
    recipe_cmd = sub.add_parser("recipe",
                                help="import mixed-gguf-converter's casts; export rules for llama.cpp / sd.cpp")
    rsub = recipe_cmd.add_subparsers(dest="action", required=True)
    recipe_import = rsub.add_parser("import", help="configurations.yaml (casts: castto/layers) -> recipe YAML")
    recipe_import.add_argument("file")
    add_output_argument(recipe_import, "recipe YAML to write")
    recipe_import.add_argument("--name", help="which configuration, when the file holds several")
    recipe_import.add_argument("--default", default="BF16", help="type of blocks no cast names (default BF16)")
    recipe_import.add_argument("--model", choices=NAMED_CONFIGS, default=DEFAULT_MODEL,
                               help=f"the model the casts' block numbers count (default {DEFAULT_MODEL})")
    recipe_export = rsub.add_parser("export",
                                    help="recipe YAML -> llama-quantize --tensor-type options or sd.cpp rules")
    recipe_export.add_argument("file")
    recipe_export.add_argument("--format", choices=["llama.cpp", "sd.cpp"], default="llama.cpp")
    recipe_cmd.set_defaults(run=cmd_recipe)
    demo_cmd = sub.add_parser("demo", help="convert a small random model end to end")
    demo_cmd.add_argument("--dir", help="folder for the demo files (default: a new temp folder)")
    demo_cmd.add_argument("--family", choices=FAMILIES, default=named_model(DEFAULT_MODEL).family.name,
                          help="the family whose layout the random model has")
    demo_cmd.set_defaults(run=cmd_demo)
    return p


class _NoticeHandler(logging.Handler):
    """A log line on stderr above the progress bars, not inside one."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def show_notices() -> None:
    """The pack's own notices on stderr, a line each: a first run on a machine says which
    kernel it is building, rather than seeming to hang."""
    logger = logging.getLogger(__package__)
    if not logger.handlers:
        handler = _NoticeHandler()
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    show_notices()
    try:
        return args.run(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
