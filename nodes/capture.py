"""Capture Layer Costs: measure per-block costs on the hidden states of a real sampling run.

The node returns a clone of the MODEL with two additions, so the sampled image is
bit-identical to the same graph without it:
- a ``dit`` replace patch on the first double block that copies the stack's inputs at
  the chosen step(s) and then runs the block unchanged;
- a sampler wrapper that, while sampling, sums the squares of what enters every block
  weight at every step (read-only hooks: an importance matrix), and once sampling has
  finished (the model still loaded) runs ``quant.sweep`` on ComfyUI's own blocks for each
  captured input; it adds the costs to the named file and the sums to
  ``<name>.imatrix.gguf`` beside it.
"""
from __future__ import annotations

import random
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from comfy_api.latest import io

import comfy.patcher_extension

from ..quant import codecs
from ..quant.atomic import write_new
from ..quant.capture_file import save_capture
from ..quant.costs import accumulate, model_fingerprint
from ..quant.models.flux1_stack import StackInputs, StackState, join_inputs
from ..quant.imatrix import Imatrix, add_to_file, linear_inputs
from ..quant.sweep import sweep
from .common import CATEGORY, costs_path, diffusion_model, model_source, progress_bar, refuse_quantized

DEFAULT_TYPES = ", ".join(codecs.QUANTIZED_TYPE_NAMES)
WRAPPER_KEY = "mxgguf_capture"


@dataclass
class Captured:
    """The block stack's inputs at one step, as ComfyUI's Flux passed them to block 0."""

    inputs: StackInputs
    attn_mask: torch.Tensor | None
    transformer_options: dict
    step: int
    sigma: float


class ComfyBlockWeights(MutableMapping):
    """A ComfyUI block's 2-D weights by name; setting one swaps the module's parameter.

    The sweep restores the original Parameter objects themselves. A swapped-in value goes to
    the parameter's device; it stays float32 where the layer casts weights to the compute
    dtype as it runs, else takes the parameter's dtype (then the compute dtype): either way
    the layer computes with what ComfyUI-GGUF's dequantization would give it."""

    def __init__(self, block: torch.nn.Module):
        self._slots = {name: (block.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
                       for name, p in block.named_parameters() if p.dim() == 2}

    def __getitem__(self, name: str) -> torch.Tensor:
        module, leaf = self._slots[name]
        return module._parameters[leaf]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        module, leaf = self._slots[name]
        if not isinstance(value, torch.nn.Parameter):
            current = module._parameters[leaf]
            dtype = None if getattr(module, "comfy_cast_weights", False) else current.dtype
            value = value.to(device=current.device, dtype=dtype)
        module._parameters[leaf] = value  # bypasses nn.Module's Parameter-only check on purpose

    def __delitem__(self, name: str) -> None:
        raise TypeError("a block's weights cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)


class ComfyFluxStack:
    """ComfyUI's own Flux blocks as the sweep's ``BlockStack``, run as Flux's forward runs them.

    ComfyUI's blocks add into their inputs in place, so each block gets copies: the sweep
    keeps every block's clean input."""

    def __init__(self, model: torch.nn.Module):
        self.blocks = list(model.double_blocks) + list(model.single_blocks)
        self.depth_double = len(model.double_blocks)

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def weights(self, block: int) -> ComfyBlockWeights:
        return ComfyBlockWeights(self.blocks[block])

    def start(self, c: Captured) -> StackState:
        return StackState(c.inputs.img, c.inputs.txt, c.inputs.txt.shape[1])

    def join(self, samples: Sequence[Captured]) -> list[Captured]:
        """Captures of one shape as one batch; masked ones (rare) run alone."""
        masked = [c for c in samples if c.attn_mask is not None]
        plain = [c for c in samples if c.attn_mask is None]
        joined = [Captured(inputs, None, plain[members[0]].transformer_options, plain[members[0]].step,
                           plain[members[0]].sigma)
                  for inputs, members in join_inputs([c.inputs for c in plain])]
        return joined + masked

    def forward(self, block: int, state: StackState, c: Captured) -> StackState:
        kw = {"vec": c.inputs.vec, "pe": c.inputs.pe, "attn_mask": c.attn_mask,
              "transformer_options": c.transformer_options}
        if block < self.depth_double:
            img, txt = self.blocks[block](img=state.img.clone(), txt=state.txt.clone(), **kw)
            return StackState(img, txt, state.txt_tokens)
        if state.txt is None:
            x = state.img.clone()
        else:  # entering the single blocks, as Flux.forward_orig does
            img = state.img
            if img.dtype == torch.float16:
                img = torch.nan_to_num(img, nan=0.0, posinf=65504, neginf=-65504)
            x = torch.cat((state.txt, img), 1)
        return StackState(self.blocks[block](x, **kw), None, state.txt_tokens)

    def output(self, state: StackState) -> torch.Tensor:
        return state.image_tokens()


class CaptureSession:
    """Per sampling run: which steps to capture, what was captured, and the sweep after."""

    def __init__(self, model, costs_file: Path, types: Sequence[str], step: int, per_run: int, model_fp: dict,
                 block_weights: Sequence[str], save_inputs: bool = False):
        self.model, self.costs_file, self.types, self.save_inputs = model, costs_file, list(types), save_inputs
        self.block_weights = list(block_weights)
        self.step, self.per_run, self.model_fp = step, per_run, model_fp
        self.wanted: set[int] = set()
        self.captured: list[Captured] = []

    def choose_steps(self, n_steps: int, seed: int) -> set[int]:
        if self.step >= 0:
            if self.step >= n_steps:
                raise ValueError(f"Capture Layer Costs: step {self.step} does not exist in a {n_steps}-step run "
                                 f"(steps are 0..{n_steps - 1}; -1 picks one at random)")
            return {self.step}
        return set(random.Random(seed).sample(range(n_steps), min(self.per_run, n_steps)))

    def block_patch(self, args: dict, extra: dict) -> dict:
        """``dit`` replace patch of double block 0: copy the inputs at a wanted step, run the block."""
        opts = args["transformer_options"]
        if self.wanted and "sample_sigmas" in opts and "sigmas" in opts:
            sigma = float(opts["sigmas"].reshape(-1)[0])
            schedule = opts["sample_sigmas"][:-1].float().cpu()
            step = int(torch.argmin((schedule - sigma).abs()))
            if step in self.wanted and step not in {c.step for c in self.captured}:
                inputs = StackInputs(args["img"].clone(), args["txt"].clone(), args["vec"], args["pe"])
                self.captured.append(Captured(inputs, args.get("attn_mask"), opts, step, sigma))
        return extra["original_block"](args)

    def sampler_wrapper(self, executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        """Around one sampling run: choose steps, sample, then measure what was captured."""
        n_steps = len(sigmas) - 1
        seed = int(extra_args.get("seed", 0))
        self.wanted, self.captured = self.choose_steps(n_steps, seed), []
        imatrix = Imatrix(datasets=["ComfyUI sampling"], chunk_count=n_steps)
        try:
            with linear_inputs(diffusion_model(self.model), self.block_weights, imatrix):
                out = executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
            if self.captured:
                self.measure(self.captured, n_steps, seed, tuple(noise.shape[-2:]))
            add_to_file(self.imatrix_file, imatrix)  # atomic, after the costs: a Cancel leaves both as they were
        finally:
            self.wanted, self.captured = set(), []
        return out

    @property
    def imatrix_file(self) -> Path:
        return self.costs_file.with_name(self.costs_file.stem + ".imatrix.gguf")

    def measure(self, captured: Sequence[Captured], n_steps: int, seed: int, latent_hw: tuple[int, int]) -> None:
        """One sweep over every capture of the run: each (block, type) is quantized once for all."""
        samples = []
        for c in captured:
            sample = {"source": "comfyui", "seed": seed, "steps": n_steps, "step": c.step,
                      "sigma": round(c.sigma, 6), "resolution": [8 * latent_hw[1], 8 * latent_hw[0]],
                      "batch": int(c.inputs.img.shape[0]), "dtype": str(c.inputs.img.dtype).removeprefix("torch.")}
            if self.save_inputs:
                self.keep_inputs(c, sample, f"seed{seed}_step{c.step}")
            samples.append(sample)
        stack = ComfyFluxStack(diffusion_model(self.model))
        total = stack.n_blocks * len(self.types)
        result = sweep(stack, captured, self.types, progress=progress_bar(total))
        table = result.table(self.model_fp, stack.n_blocks, self.types, samples,
                             {"measured_with": "Capture Layer Costs (ComfyUI's Flux blocks)"})
        accumulate(self.costs_file, table)  # atomic: a Cancel before this leaves the file as it was

    def keep_inputs(self, c: Captured, sample: dict, stem: str) -> None:
        """Save what entered the blocks beside the costs file, for ``python -m quant costs --inputs``."""
        folder = self.costs_file.with_suffix(".inputs")
        folder.mkdir(exist_ok=True)
        write_new(folder / f"{stem}.safetensors", lambda path: save_capture(path, c.inputs, sample))


class CaptureLayerCosts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MxCaptureLayerCosts",
            display_name="Capture Layer Costs",
            category=CATEGORY,
            description="Place on the MODEL line before the sampler. At a chosen step it records what enters "
                        "FLUX's blocks; after sampling it measures, for each block and type, the error of the "
                        "final hidden state with only that block quantized, and adds it to a costs file. "
                        "Every step it also sums what enters each block weight: an importance matrix "
                        "(<costs_file>.imatrix.gguf) for 'convert --imatrix'. The image is unchanged.",
            inputs=[
                io.Model.Input("model", tooltip="A full-precision FLUX model (not GGUF or fp8)."),
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
                                 tooltip="Also save what entered the blocks (<costs_file>.inputs/*.safetensors), "
                                         "so 'python -m quant costs --inputs' can measure more types later "
                                         "without ComfyUI."),
            ],
            outputs=[io.Model.Output(tooltip="The same model; sampling it also measures costs.")],
        )

    @classmethod
    def execute(cls, model, costs_file: str, step: int, samples_per_run: int, types: str,
                save_inputs: bool = False) -> io.NodeOutput:
        refuse_quantized(model, "costs must be measured on full-precision weights")
        path = costs_path(costs_file)
        source, family_model = model_source(model)
        if family_model.family.name != "flux1":  # ComfyFluxStack runs FLUX.1's forward only, for now
            raise ValueError(f"Capture Layer Costs measures FLUX.1 models so far; this MODEL is "
                             f"{family_model.describe()}")
        out = model.clone()
        block_weights = [k for k, shape in source.shapes.items() if family_model.is_quantizable(k, shape)]
        session = CaptureSession(out, path, codecs.parse_type_list(types), step, samples_per_run,
                                 model_fingerprint(family_model, source), block_weights, save_inputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        out.set_model_patch_replace(session.block_patch, "dit", "double_block", 0)
        out.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                                 session.sampler_wrapper)
        text = f"costs of {', '.join(session.types)} go to {path}; importance matrix to {session.imatrix_file.name}"
        return io.NodeOutput(out, ui={"text": [text]})
