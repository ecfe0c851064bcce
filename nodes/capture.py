"""Capture Layer Costs: measure per-block costs on the hidden states of a real sampling run.

The node returns a clone of the MODEL with a sampler wrapper; the sampled image is
bit-identical to the same graph without it. While sampling, read-only hooks copy the
diffusion model's inputs (as ComfyUI called it) at the chosen step(s) and sum the squares of
what enters every block weight at every step (an importance matrix). Once sampling has
finished (the model still loaded), ``quant.replay`` measures each (block, type) on ComfyUI's
own forward of every family, with the blocks before it replaying their recorded outputs; it
adds the costs to the named file and the sums to ``<name>.imatrix.gguf`` beside it.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from comfy_api.latest import io

import comfy.lora
import comfy.model_management
import comfy.patcher_extension
from comfy.model_patcher import LowVramPatch

from ..quant import codecs
from ..quant.atomic import write_new
from ..quant.capture_file import save_capture
from ..quant.costs import FINAL_HIDDEN_STATE, CostError, accumulate, load_costs, model_fingerprint
from ..quant.imatrix import Imatrix, add_to_file, linear_inputs
from ..quant.models import Model
from ..quant.patches import LORAS_KEY, BakedLora, describe_loras, lora_records
from ..quant.replay import MEASURES, BlockReplay, ModuleWeights, replay_sweep
from .common import CATEGORY, costs_path, diffusion_model, model_source, progress_bar, refuse_quantized
from .loras import baked_loras

DEFAULT_TYPES = ", ".join(codecs.QUANTIZED_TYPE_NAMES)
WRAPPER_KEY = "mxgguf_capture"
DEVICE_RESERVE = 2 * 2**30  # recordings leave this much of the card free for the forwards


@dataclass
class Captured:
    """The diffusion model's inputs at one step, as ComfyUI called it (tensors copied)."""

    args: tuple
    kwargs: dict
    step: int
    sigma: float

    def run(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's forward on these inputs (fresh copies: a forward may write into them)."""
        return model(*map(_copied, self.args), **{k: _copied(v) for k, v in self.kwargs.items()})


def _copied(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


class CaptureSession:
    """Per sampling run: which steps to capture, what was captured, and the sweep after."""

    def __init__(self, model, family_model: Model, costs_file: Path, types: Sequence[str], step: int, per_run: int,
                 model_fp: dict, block_weights: Sequence[str], save_inputs: bool = False,
                 measure: str = FINAL_HIDDEN_STATE, loras: Sequence[BakedLora] = ()):
        self.model, self.family_model, self.costs_file, self.measure = model, family_model, costs_file, measure
        self.types, self.save_inputs = list(types), save_inputs
        self.block_weights = list(block_weights)
        self.step, self.per_run, self.model_fp = step, per_run, model_fp
        self.loras = list(loras)
        self.wanted: set[int] = set()
        self.captured: list[Captured] = []

    def choose_steps(self, n_steps: int, seed: int) -> set[int]:
        if self.step >= 0:
            if self.step >= n_steps:
                raise ValueError(f"Capture Layer Costs: step {self.step} does not exist in a {n_steps}-step run "
                                 f"(steps are 0..{n_steps - 1}; -1 picks one at random)")
            return {self.step}
        return set(random.Random(seed).sample(range(n_steps), min(self.per_run, n_steps)))

    def model_inputs(self, _module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of the diffusion model: copy its inputs at a wanted step (the first call
        of that step: with cond and uncond in separate calls, the cond one)."""
        opts = kwargs.get("transformer_options") or {}
        if not self.wanted or "sample_sigmas" not in opts or "sigmas" not in opts:
            return
        sigma = float(opts["sigmas"].reshape(-1)[0])
        schedule = opts["sample_sigmas"][:-1].float().cpu()
        step = int(torch.argmin((schedule - sigma).abs()))
        if step in self.wanted and step not in {c.step for c in self.captured}:
            kept = {k: _copied(v) for k, v in kwargs.items() if k != "transformer_options"}
            kept["transformer_options"] = dict(opts)
            self.captured.append(Captured(tuple(map(_copied, args)), kept, step, sigma))

    def sampler_wrapper(self, executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        """Around one sampling run: choose steps, sample, then measure what was captured."""
        n_steps = len(sigmas) - 1
        seed = int(extra_args.get("seed", 0))
        self.wanted, self.captured = self.choose_steps(n_steps, seed), []
        imatrix = Imatrix(datasets=["ComfyUI sampling"], chunk_count=n_steps)
        dm = diffusion_model(self.model)
        try:
            hook = dm.register_forward_pre_hook(self.model_inputs, with_kwargs=True)
            try:
                with linear_inputs(dm, self.block_weights, imatrix):
                    out = executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
            finally:
                hook.remove()
            if self.captured:
                self.sweep_captured(self.captured, n_steps, seed)
            add_to_file(self.imatrix_file, imatrix)  # atomic, after the costs: a Cancel leaves both as they were
        finally:
            self.wanted, self.captured = set(), []
        return out

    @property
    def imatrix_file(self) -> Path:
        return self.costs_file.with_name(self.costs_file.stem + ".imatrix.gguf")

    def sweep_captured(self, captured: Sequence[Captured], n_steps: int, seed: int) -> None:
        """One sweep over every capture of the run: each (block, type) is quantized once for all."""
        dm = diffusion_model(self.model)
        fm = self.family_model
        device = self.model.load_device  # where ComfyUI computes (weights may sit elsewhere when offloaded)
        block_names = [fm.block_name(b) for b in range(fm.n_blocks)]
        replay = BlockReplay(dm, block_names, fm.family.final_layer,
                             on_device=lambda nbytes: fits_on(device, nbytes), first_inputs=self.save_inputs)
        samples = [self.sample(c, n_steps, seed) for c in captured]

        recorded_bytes = []

        def recorded(i: int, rec) -> None:
            recorded_bytes.append(rec.nbytes)
            samples[i]["dtype"] = str(rec.dtype).removeprefix("torch.")  # the blocks' compute dtype
            if self.save_inputs:
                self.keep_inputs(rec.first_inputs, samples[i], f"seed{seed}_step{captured[i].step}")

        names = [[k.removeprefix(f"{block}.") for k in self.block_weights if k.startswith(f"{block}.")]
                 for block in block_names]
        results = replay_sweep(replay, [lambda c=c: c.run(dm) for c in captured], self.types,
                               lambda b: LoadedBlockWeights(replay.blocks[b], names[b], device), memory_budget(device),
                               progress=progress_bar(fm.n_blocks * len(self.types)), recorded=recorded)
        result = results[self.measure]
        table = result.table(self.model_fp, fm.n_blocks, self.types, samples,
                             {"measured_with": "Capture Layer Costs (ComfyUI's own forward, replayed)",
                              "measure": self.measure,
                              "block_forwards_per_sample": result.block_forwards / len(captured),
                              "recorded_bytes_per_sample": max(recorded_bytes),
                              **({LORAS_KEY: lora_records(self.loras)} if self.loras else {})})
        accumulate(self.costs_file, table)  # atomic: a Cancel before this leaves the file as it was

    @staticmethod
    def sample(c: Captured, n_steps: int, seed: int) -> dict:
        x = c.args[0] if c.args else c.kwargs["x"]
        return {"source": "comfyui", "seed": seed, "steps": n_steps, "step": c.step, "sigma": round(c.sigma, 6),
                "latent": list(x.shape[1:]), "batch": int(x.shape[0])}

    def keep_inputs(self, tensors: dict, sample: dict, stem: str) -> None:
        """Save what entered the first block beside the costs file (FLUX.1's serve
        ``python -m quant costs --inputs``)."""
        folder = self.costs_file.with_suffix(".inputs")
        folder.mkdir(exist_ok=True)
        write_new(folder / f"{stem}.safetensors", lambda path: save_capture(path, tensors, sample))


class LoadedBlockWeights(ModuleWeights):
    """A block's weights as ComfyUI loaded them: with a LoRA, patched in place (rounded to the
    weight's dtype) on a full load. Loading in low VRAM leaves some weights unpatched and patches
    them as their layer runs (a ``LowVramPatch`` among the module's ``weight_function``s). While
    the block is swept (``with``), each such weight is patched in place at float32 (as Quantize
    patches it) and its run-time patch set aside, so a type is measured on the patched weight,
    not as the LoRA added to the quantized weight."""

    def __init__(self, block: torch.nn.Module, names: Sequence[str], device: torch.device):
        super().__init__(block, names)
        self.device = device
        self._set_aside: list[tuple[torch.nn.Module, torch.nn.Parameter, list]] = []

    def __enter__(self) -> LoadedBlockWeights:
        try:
            for module, leaf in self._slots.values():
                functions = getattr(module, "weight_function", [])
                run_time = [f for f in functions if isinstance(f, LowVramPatch)]
                if leaf == "weight" and run_time:
                    self._patch_in_place(module, functions, run_time)
        except BaseException:  # out of memory halfway: the modules (shared by every clone) as they were
            self.__exit__()
            raise
        return self

    def _patch_in_place(self, module: torch.nn.Module, functions: list, run_time: list) -> None:
        original = module.weight
        weight = original.detach().to(self.device, torch.float32, copy=True)
        for f in run_time:
            weight = comfy.lora.calculate_weight(f.patches[f.key], weight, f.key, intermediate_dtype=torch.float32)
        self._set_aside.append((module, original, functions))
        module.weight_function = [f for f in functions if f not in run_time]
        module._parameters["weight"] = torch.nn.Parameter(weight.to(original.device), requires_grad=False)

    def __exit__(self, *exc: object) -> None:
        while self._set_aside:
            module, original, functions = self._set_aside.pop()
            module._parameters["weight"], module.weight_function = original, functions


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether a recorded tensor stays on the compute device (else pinned CPU memory)."""
    return comfy.model_management.get_free_memory(device) > nbytes + DEVICE_RESERVE


def memory_budget(device: torch.device) -> int:
    """Bytes of recordings one group of samples may hold: half of what is free, device and RAM."""
    free = psutil.virtual_memory().available
    if device.type != "cpu":
        free += max(0, comfy.model_management.get_free_memory(device) - DEVICE_RESERVE)
    return free // 2


class CaptureLayerCosts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MxCaptureLayerCosts",
            display_name="Capture Layer Costs",
            category=CATEGORY,
            description="Place on the MODEL line before the sampler. At a chosen step it records the diffusion "
                        "model's inputs; after sampling it measures, for each block and type, the error of the "
                        "final hidden state with only that block quantized, and adds it to a costs file. "
                        "Every step it also sums what enters each block weight: an importance matrix "
                        "(<costs_file>.imatrix.gguf) for 'convert --imatrix'. The image is unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="A full-precision model of a family the pack knows (FLUX.1, FLUX.2, "
                                                "Chroma, Qwen-Image, Wan, HiDream, Lumina 2, Z-Image; not GGUF "
                                                "or fp8)."),
                io.String.Input("costs_file", default="flux1-dev-measured",
                                tooltip="Name of the costs file in models/mxgguf_costs (.json is added). Each "
                                        "queued run adds its samples to it; a name, not a path."),
                io.Int.Input("step", default=-1, min=-1, max=10000,
                             tooltip="Sampling step whose inputs are measured (0 = first). -1 picks step(s) at "
                                     "random each run, from the sampler's seed."),
                io.Int.Input("samples_per_run", default=1, min=1, max=64,
                             tooltip="With step -1: how many different steps of each run to measure."),
                io.String.Input("types", default=DEFAULT_TYPES,
                                tooltip="GGUF types to measure, comma-separated. Each adds one pass over the "
                                        "blocks after the first."),
                io.Boolean.Input("save_inputs", default=False, optional=True,
                                 tooltip="Also save what entered the first block (<costs_file>.inputs/"
                                         "*.safetensors); for FLUX.1, 'python -m quant costs --inputs' "
                                         "measures more types from them later without ComfyUI."),
                io.Combo.Input("measure", options=list(MEASURES), default=FINAL_HIDDEN_STATE, optional=True,
                               tooltip="The error each cost is: of the final hidden state (what the last block "
                                       "hands to the final layer) or of the model's output (what the sampler "
                                       "receives). Tables of different measures never merge."),
            ],
            outputs=[io.Model.Output(tooltip="The same model; sampling it also measures costs.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],  # the LoRA loaders upstream, for the table to name
        )

    @classmethod
    def execute(cls, model, costs_file: str, step: int, samples_per_run: int, types: str,
                save_inputs: bool = False, measure: str = FINAL_HIDDEN_STATE) -> io.NodeOutput:
        refuse_quantized(model, "costs must be measured on full-precision weights")
        if measure not in MEASURES:  # ComfyUI checks no V3 combo against its options at /prompt
            raise ValueError(f"unknown measure {measure!r}; one of {list(MEASURES)}")
        path = costs_path(costs_file)
        loras = baked_loras(model, cls.hidden.prompt, cls.hidden.unique_id)
        if path.exists() and (kept := load_costs(path).loras) != loras:  # refused now, not after the sweep
            raise CostError(f"{path.name} was measured with LoRAs {describe_loras(kept)}; this model has "
                            f"{describe_loras(loras)}: their costs do not merge. Choose another costs_file")
        source, family_model = model_source(model)
        out = model.clone()
        block_weights = [k for k, shape in source.shapes.items() if family_model.is_quantizable(k, shape)]
        session = CaptureSession(out, family_model, path, codecs.parse_type_list(types), step, samples_per_run,
                                 model_fingerprint(family_model, source), block_weights, save_inputs, measure, loras)
        path.parent.mkdir(parents=True, exist_ok=True)
        out.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                                 session.sampler_wrapper)
        text = f"costs of {', '.join(session.types)} go to {path}; importance matrix to {session.imatrix_file.name}"
        if session.loras:
            text += f"; measured with LoRAs {describe_loras(session.loras)}"
        return io.NodeOutput(out, ui={"text": [text]})
