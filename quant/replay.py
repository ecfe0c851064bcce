"""Costs on a model's own forward, for any family: record, then replay.

One clean forward of a sample records every block's output, what the final layer received
(the final hidden state) and what the model returned. Then, for each (block i, type), the
whole forward runs again with only block i quantized while every block that ran before i
hands back its recorded output instead of computing: i's input is the clean one, the blocks
from i on compute, and no family needs forward code of its own here. Over N blocks that is
(N+1)/2 block forwards per (block, type), as the sweep over a ``BlockStack`` costs.

The forward is the caller's: each sample is a ``run()`` that calls the model once (ComfyUI's
diffusion model on the inputs it was called with, for the Capture node). Blocks are found by
name and their ``forward`` replaced on the instance while a pass runs, restored after (also on
an error or a cancel). Recorded tensors are copies: blocks may add into their inputs in place.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .costs import FINAL_HIDDEN_STATE, MODEL_OUTPUT
from .sweep import SweepProgress, SweepResult, add_error, quantized_blocks

MEASURES = (FINAL_HIDDEN_STATE, MODEL_OUTPUT)


def _tensors_mapped(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``value`` (a tensor, or tuples, lists and dicts of them) with ``fn`` applied to each tensor."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_tensors_mapped(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _tensors_mapped(v, fn) for k, v in value.items()}
    return value


def _tensors_in(value: Any) -> Iterator[Tensor]:
    """The tensors in ``value`` (a tensor, or tuples, lists and dicts of them), in order."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v)


def _first_tensor(value: Any) -> Tensor:
    first = next(_tensors_in(value), None)
    if first is None:
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return first


def _kept(t: Tensor, on_device: Callable[[int], bool]) -> Tensor:
    """A copy of ``t``: on its device where ``on_device(bytes)`` says it fits, else in CPU memory,
    pinned from a CUDA device (page-locked: it copies back at full speed)."""
    if t.device.type == "cpu" or on_device(t.numel() * t.element_size()):
        return t.detach().clone()
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
    return out.copy_(t.detach())


class ModuleWeights(MutableMapping):
    """A block's 2-D weights by name (``names``, else all of them); setting one swaps the
    module's parameter, and the sweep restores the original Parameter objects themselves.

    A swapped-in value goes to the parameter's device; it stays float32 where the layer casts
    weights to the compute dtype as it runs (ComfyUI's ``comfy_cast_weights``), else takes the
    parameter's dtype: either way the layer computes with what a GGUF loader's dequantization
    would give it."""

    def __init__(self, block: nn.Module, names: Sequence[str] | None = None):
        wanted = None if names is None else set(names)
        self._slots = {name: (block.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
                       for name, p in block.named_parameters() if p.dim() == 2 and (wanted is None or name in wanted)}

    def __getitem__(self, name: str) -> Tensor:
        module, leaf = self._slots[name]
        return module._parameters[leaf]

    def __setitem__(self, name: str, value: Tensor) -> None:
        module, leaf = self._slots[name]
        if not isinstance(value, nn.Parameter):
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


@dataclass
class Recording:
    """One sample's clean forward."""

    outputs: dict[int, Any]  # block -> its output as the forward got it (copies)
    devices: dict[int, torch.device]  # block -> where its output was
    order: list[int]  # the blocks in the order the forward ran them
    final: dict[str, Tensor] = field(default_factory=dict)  # measure -> the clean value, float32
    first_inputs: dict[str, Tensor] = field(default_factory=dict)  # what entered the first block, by keyword

    def ran_before(self, block: int) -> set[int]:
        return set(self.order[: self.order.index(block)])

    @property
    def dtype(self) -> torch.dtype:
        """What the blocks computed in: the first block's output dtype."""
        return _first_tensor(self.outputs[self.order[0]]).dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for o in self.outputs.values() for t in _tensors_in(o))


class BlockReplay:
    """A model's blocks (by submodule name, in the family's numbering) and its final layer, for
    recording and replaying forwards. ``on_device(bytes)``: whether a recorded tensor of that
    size stays on the compute device (default: always), else it goes to pinned CPU memory."""

    def __init__(self, model: nn.Module, block_names: Sequence[str], final_layer: str,
                 on_device: Callable[[int], bool] = lambda nbytes: True, first_inputs: bool = False):
        self.blocks = [model.get_submodule(name) for name in block_names]
        self.block_names = list(block_names)
        self.final_layer = model.get_submodule(final_layer)
        self.on_device = on_device
        self.first_inputs = first_inputs  # recordings keep CPU copies of what entered the first block
        self.forwards = 0  # block forwards computed, not replayed

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def record(self, run: Callable[[], Any]) -> Recording:
        """One clean forward; with ``first_inputs``, also CPU copies of the tensors that entered the
        first block to run (positional ones as ``arg0``...), for a saved capture."""
        rec = Recording({}, {}, [])

        def recording(b: int, original: Callable[..., Any]) -> Callable[..., Any]:
            def forward(*args: Any, **kwargs: Any) -> Any:
                if b in rec.outputs:
                    raise RuntimeError(f"block {self.block_names[b]} ran twice in one forward: the replay needs "
                                       f"each block to run once")
                if self.first_inputs and not rec.order:
                    named = {**{f"arg{i}": a for i, a in enumerate(args)}, **kwargs}
                    rec.first_inputs = {k: v.detach().cpu().clone() for k, v in named.items() if isinstance(v, Tensor)}
                out = self._computed(original, args, kwargs)
                rec.outputs[b] = _tensors_mapped(out, lambda t: _kept(t, self.on_device))
                rec.devices[b] = _first_tensor(out).device
                rec.order.append(b)
                return out
            return forward

        rec.final = self._pass(run, recording)
        missing = [self.block_names[b] for b in range(self.n_blocks) if b not in rec.outputs]
        if missing:
            raise RuntimeError(f"blocks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} did not run "
                               f"in the model's forward")
        return rec

    @torch.no_grad()
    def rerun(self, run: Callable[[], Any], rec: Recording, block: int) -> dict[str, Tensor]:
        """The forward's final hidden state and output (float32, by measure) with the blocks that
        ran before ``block`` handing back their recorded outputs."""
        before = rec.ran_before(block)

        def replaying(b: int, original: Callable[..., Any]) -> Callable[..., Any]:
            if b not in before:
                return lambda *args, **kwargs: self._computed(original, args, kwargs)
            return lambda *args, **kwargs: _tensors_mapped(rec.outputs[b], lambda t: t.to(rec.devices[b], copy=True))

        return self._pass(run, replaying)

    def _computed(self, original: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        self.forwards += 1
        return original(*args, **kwargs)

    def _pass(self, run: Callable[[], Any], forward_of: Callable[[int, Callable[..., Any]], Callable[..., Any]]
              ) -> dict[str, Tensor]:
        hidden: list[Tensor] = []

        def final_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden.append(_first_tensor((args, kwargs)).to(torch.float32, copy=True))

        handle = self.final_layer.register_forward_pre_hook(final_input, with_kwargs=True)
        try:
            with self._forwards_replaced(forward_of):
                output = _first_tensor(run()).to(torch.float32, copy=True)
        finally:
            handle.remove()
        if len(hidden) != 1:
            raise RuntimeError(f"the final layer ran {len(hidden)} times in one forward")
        return {FINAL_HIDDEN_STATE: hidden[0], MODEL_OUTPUT: output}

    @contextlib.contextmanager
    def _forwards_replaced(self, forward_of: Callable[[int, Callable[..., Any]], Callable[..., Any]]
                           ) -> Iterator[None]:
        own = [block.__dict__.get("forward") for block in self.blocks]  # an instance forward someone set
        try:
            for b, block in enumerate(self.blocks):
                block.forward = forward_of(b, block.forward)
            yield
        finally:
            for block, previous in zip(self.blocks, own):
                if previous is None:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = previous


def replay_sweep(replay: BlockReplay, runs: Sequence[Callable[[], Any]], types: Sequence[str],
                 weights_of: Callable[[int], MutableMapping[str, Tensor]], memory_budget: int | None = None,
                 progress: SweepProgress | None = None,
                 importance: Callable[[int, str], Tensor | None] | None = None,
                 recorded: Callable[[int, Recording], None] | None = None) -> dict[str, SweepResult]:
    """Costs of ``types`` at every block over the samples ``runs``, by measure (the final hidden
    state, the model's output). Each (block, type) is quantized once for as many samples as
    ``memory_budget`` bytes of recordings hold (all where None), so a group's samples share it.
    ``recorded(sample index, recording)`` is told of each sample's clean forward."""
    if not runs:
        raise ValueError("the sweep needs at least one sample")
    results = {m: SweepResult({}, {}, 0) for m in MEASURES}
    def record(i: int) -> Recording:
        rec = replay.record(runs[i])
        if recorded is not None:
            recorded(i, rec)
        return rec

    first: Recording | None = record(0)
    per_group = len(runs) if memory_budget is None else max(1, memory_budget // max(1, first.nbytes))
    starts = range(0, len(runs), per_group)
    steps = replay.n_blocks * len(types)
    for g, start in enumerate(starts):
        group = runs[start : start + per_group]
        recordings = [first if first is not None and i == 0 else record(start + i) for i in range(len(group))]
        first = None
        told = None if progress is None else lambda done, _total, g=g: progress(g * steps + done, len(starts) * steps)
        for b, qtype in quantized_blocks(weights_of, range(replay.n_blocks), types, told, importance):
            for run, rec in zip(group, recordings):
                got = replay.rerun(run, rec, b)
                for m in MEASURES:
                    r = results[m]
                    r.sse[(b, qtype)], r.count[(b, qtype)] = add_error(r.sse.get((b, qtype), 0.0),
                                                                       r.count.get((b, qtype), 0), got[m], rec.final[m])
        del recordings
    for r in results.values():
        r.block_forwards = replay.forwards
    return results

