"""Mixed GGUF Quantize: pick a type per block for a size target at least total cost, quantize.

Outputs the quantized model (its GGUF bytes, for Save mx GGUF), a MODEL that samples it
(each weight dequantized when its layer runs, as ComfyUI-GGUF does with the saved file,
so the latents match that file's), a summary and a chart.
"""
from __future__ import annotations

import math
from collections import Counter

import torch
from comfy_api.latest import io

from ..quant import codecs
from ..quant.atomic import checked_name
from ..quant.costs import CostTable, check_model, model_fingerprint, noting_costs
from ..quant.estimate import estimate_costs
from ..quant.imatrix import load_imatrix
from ..quant.mixed import MixedModel, quantize_model
from ..quant.optimize import GiB, Allocation, Target, optimize
from ..quant.patches import BakedLora, describe_loras
from ..quant.speed import SpeedProfile
from .chart import block_chart
from .common import (BUILTIN_CHOICES, CATEGORY, ESTIMATE_CHOICE, PREFIX, TARGETS, MixedGGUF, cost_table, costs_choices,
                     costs_path, diffusion_model, file_state, imatrix_choices, imatrix_path, model_source,
                     progress_bar, refuse_quantized, speed_profile)
from .loras import baked_loras, patched, refuse_hooks, without_patches


class DequantizedWeight:
    """ModelPatcher weight wrapper: the layer's weight as the mixed model's dequantized values."""

    def __init__(self, mixed: MixedModel, key: str):
        self.mixed, self.key = mixed, key

    def __call__(self, weight):
        return self.mixed.dequantized(self.key, weight.device).to(weight.dtype)


def summary(alloc: Allocation, mixed: MixedModel, costs_name: str, table: CostTable, target: Target,
            speed: SpeedProfile, max_slowdown: float | None) -> str:
    counts = Counter(alloc.types)
    budget = f", at most {max_slowdown:g}x" if max_slowdown else ""
    cost = ("estimated cost {:.4g} (sum of per-block weight errors: an estimate from the weights, not measured)"
            if table.estimated else "predicted cost {:.4g} (sum of per-block final-state MSE, " + costs_name + ")")
    lines = [f"{mixed.bpw:.3f} bits per parameter, {mixed.data_bytes / GiB:.2f} GiB of tensor data",
             f"target: {target.describe()}{budget}",
             cost.format(alloc.predicted_cost),
             f"predicted step time {alloc.predicted_slowdown:.2f}x the unquantized model's ({speed.device}, "
             f"{speed.dtype}, {speed.tokens} tokens, {speed.dequantizer} dequantize)",
             "types: " + ", ".join(f"{t} x{n}" for t, n in counts.most_common()),
             "blocks: " + " ".join(alloc.types)]
    return "\n".join(lines)


def runs_wrappers(module: torch.nn.Module, key: str) -> bool:
    """Whether ComfyUI runs weight wrappers for tensor ``key``: a weight or bias of one of its layers."""
    owner, _, leaf = key.rpartition(".")
    return leaf in ("weight", "bias") and hasattr(module.get_submodule(owner), f"{leaf}_function")


def lora_lines(loras: list[BakedLora], table: CostTable) -> str:
    """The LoRAs baked in, and the costs' where they were measured with others."""
    text = f"\nLoRAs baked in: {describe_loras(loras)}" if loras else ""
    return text + (f"\n{note}" if (note := table.other_loras(loras)) else "")


class MixedGGUFQuantize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MxMixedGGUFQuantize",
            display_name="Mixed GGUF Quantize",
            category=CATEGORY,
            description="Chooses a GGUF type per block (FLUX.1, FLUX.2, Chroma, Qwen-Image, Wan, HiDream, "
                        "Lumina 2, Z-Image) that meets the target at the least total cost "
                        "(exact), and quantizes. LoRAs loaded on the MODEL line are baked in first, at full "
                        "precision. Sample the MODEL output to see the mixed model before saving.",
            inputs=[
                io.Model.Input("model", tooltip="The full-precision model to quantize (not GGUF or fp8), with any "
                                                "LoRAs to bake in."),
                io.Combo.Input("costs", options=costs_choices(), default=BUILTIN_CHOICES[0],
                               tooltip="Per-block costs: the built-in FLUX.1-dev table (also right for its "
                                       "finetunes) or a file made by Capture Layer Costs. A file that Capture "
                                       "in the same graph is about to create may be typed in."),
                io.Combo.Input("target", options=list(TARGETS), default="bits per parameter",
                               tooltip="What the value means: average bits per parameter over the whole file, "
                                       "the file's size, or the memory of the card it must fit (2 GiB are kept "
                                       "for activations and the VAE)."),
                io.Float.Input("value", default=6.9, min=0.5, max=1000.0, step=0.1,
                               tooltip="The target: e.g. 6.9 bits per parameter, a 9.5 GB file, a 12 GB card."),
                io.Float.Input("max_slowdown", default=0.0, min=0.0, max=100.0, step=0.05,
                               display_name="max slowdown",
                               tooltip="0: no limit. Else the predicted sampling step time of the file, at most "
                                       "this many times the unquantized model's on this device (e.g. 1.5): "
                                       "GGUF dequantizes every weight at every step, some types much faster "
                                       "than others. The device's speed is measured the first time (seconds "
                                       "on a GPU, minutes on a CPU) and kept in models/mxgguf_costs."),
                io.String.Input("types", default="all",
                                tooltip="Types the optimizer may choose, comma-separated, or 'all' (every type "
                                        "the costs have)."),
                io.Combo.Input("imatrix", options=imatrix_choices(), default="none", optional=True,
                               tooltip="Optional: an importance matrix of this model (Capture Layer Costs writes "
                                       "<costs_file>.imatrix.gguf): quantize with ggml's importance-weighted "
                                       "paths. The costs were measured without one unless its file says so."),
                io.AnyType.Input("after", optional=True,
                                 tooltip="Optional: anything this node must wait for. With Capture Layer Costs "
                                         "in the same graph, wire the sampler's LATENT here so the costs of this "
                                         "run are written before they are read."),
            ],
            outputs=[
                MixedGGUF.Output("mx_gguf", tooltip="The quantized model, for Save mx GGUF."),
                io.Model.Output("mixed_model", tooltip="The mixed model, to sample before saving."),
                io.String.Output("summary", tooltip="Size, bits per parameter, predicted cost and step time, "
                                                    "types, LoRAs baked in."),
                io.Image.Output("chart", tooltip="Type (bar height: bits) and cost (dot) per block; below, each "
                                                 "block's share of the predicted step time."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],  # the LoRA loaders upstream, for the file to name
        )

    @classmethod
    def validate_inputs(cls, costs: str, target: str) -> bool | str:
        # ComfyUI checks no V3 combo against its options at /prompt: a bad target would pass
        if target not in TARGETS:
            return f"unknown target {target!r}; one of {list(TARGETS)}"
        if costs.startswith("builtin:"):
            return True if costs in BUILTIN_CHOICES else f"no built-in cost table {costs!r}"
        if costs == ESTIMATE_CHOICE:
            return True
        try:
            checked_name(costs)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, costs: str, imatrix: str = "none", **_: object) -> tuple:
        """Run again when the costs file or the importance matrix changed on disk (a new capture,
        ``quant costs merge``), though the graph did not: ComfyUI would reuse the old outputs."""
        costs_state = costs if costs.startswith("builtin:") or costs == ESTIMATE_CHOICE else file_state(costs_path, costs)
        imatrix_state = imatrix if imatrix == "none" else file_state(imatrix_path, imatrix)
        return costs_state, imatrix_state

    @classmethod
    def execute(cls, model, costs: str, target: str, value: float, max_slowdown: float, types: str,
                imatrix: str = "none", after=None) -> io.NodeOutput:
        refuse_quantized(model, "quantize the full-precision model")
        refuse_hooks(model)
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; one of {list(TARGETS)}")
        size_target = Target.of(**{TARGETS[target]: value})
        source, family_model = model_source(model)
        loras = baked_loras(model, cls.hidden.prompt, cls.hidden.unique_id)
        source = patched(model, source)
        importance = None if imatrix == "none" else load_imatrix(imatrix_path(imatrix))
        if costs == ESTIMATE_CHOICE:
            table = estimate_costs(family_model, source, codecs.QUANTIZED_TYPE_NAMES, importance, imatrix,
                                   device=model.load_device, progress=progress_bar(len(source.shapes)))
        else:
            table = cost_table(costs)
        check_model(table, model_fingerprint(family_model, source))
        allowed = None if types.strip().lower() == "all" else codecs.parse_type_list(types)
        per_block = table.costs()
        speed = speed_profile(model, family_model, source.shapes,
                              allowed or sorted({t for c in per_block for t in c}))
        slowdown_budget = max_slowdown if max_slowdown > 0 else None
        alloc = optimize(family_model, source.shapes, per_block, size_target, allowed, speed=speed,
                         max_slowdown=slowdown_budget)
        recipe = noting_costs(alloc.recipe, table, costs)
        mixed = quantize_model(source, family_model, recipe, device=model.load_device,
                               progress=progress_bar(sum(math.prod(s) for s in source.shapes.values())),
                               predicted_cost=alloc.predicted_cost, imatrix=importance, imatrix_name=imatrix,
                               loras=loras)
        # Each quantized weight, and each patched F32 weight or bias of a ComfyUI layer, comes from
        # the mixed model as the file will hold it; patches on other tensors (norm scales, plain
        # modules' weights) stay ComfyUI's to apply.
        baked = {k.removeprefix(PREFIX) for k in model.patches}
        wrapped = [t.key for t in mixed.plan
                   if t.qtype != "F32" or (t.key in baked and runs_wrappers(diffusion_model(model), t.key))]
        out = without_patches(model, wrapped)
        for key in wrapped:
            out.add_weight_wrapper(PREFIX + key, DequantizedWeight(mixed, key))
        text = summary(alloc, mixed, costs, table, size_target, speed, slowdown_budget) + lora_lines(loras, table)
        if importance is not None:
            text += f"\nimportance matrix: {imatrix} ({importance.describe()})"
        step = speed.step_seconds(family_model)
        shares = [s / step for s in speed.block_dequant(mixed.plan, family_model.n_blocks)]
        chart = block_chart(alloc.types, [per_block[b].get(t) for b, t in enumerate(alloc.types)],
                            family_model.depths, text.splitlines()[0], shares)
        return io.NodeOutput(mixed, out, text, chart, ui={"text": [text]})
