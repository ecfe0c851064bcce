"""Measure costs: for each block and type, the final-state error with only that block quantized.

The direct approach re-runs the whole stack for every (block, type). Quantizing block
``i`` changes nothing before it, so one clean pass keeps the input to every block and the
clean final state; each (i, type) then runs only blocks ``i..N-1``. Over N blocks that is
(N+1)/2N of the work, about half. Each block's weights are quantized and dequantized with
our codecs, swapped in for the runs of that block and restored (the same tensor objects)
before the next: at most one quantized copy of one block exists at a time.

Several samples share one sweep: each (block, type) is quantized once and every sample is
measured with it. Samples of one shape run as one batch where the stack can join them
(one forward per block for all of them); the clean input to every block is kept for each.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from . import codecs
from .costs import CostTable
from .tensor_plan import tensor_type


class BlockStack(Protocol):
    """What the sweep needs of a model: its blocks, run one at a time."""

    @property
    def n_blocks(self) -> int: ...

    def weights(self, block: int) -> MutableMapping[str, torch.Tensor]: ...

    def start(self, inputs: Any) -> Any: ...

    def forward(self, block: int, state: Any, inputs: Any) -> Any: ...

    def output(self, state: Any) -> torch.Tensor: ...

    def join(self, samples: Sequence[Any]) -> list[Any]:
        """The samples as few batches as the stack can run at once (each sample in exactly one)."""
        ...


@dataclass
class SweepResult:
    """Sum of squared final-state errors and values counted, per (block, type)."""

    sse: dict[tuple[int, str], float]
    count: dict[tuple[int, str], int]
    block_forwards: int

    def table(self, model: Mapping[str, Any], n_blocks: int, types: Sequence[str],
              samples: Sequence[Mapping[str, Any]] = (), provenance: Mapping[str, Any] | None = None) -> CostTable:
        """These sums as a cost table of ``model`` (its fingerprint), recording the samples measured."""
        table = CostTable.empty(model, n_blocks, types)
        for (block, qtype), sse in self.sse.items():
            table.add(block, qtype, sse, self.count[(block, qtype)])
        table.samples = [dict(s) for s in samples]
        table.provenance = dict(provenance or {})
        return table


# Called after each (block, type); may raise to cancel (everything is restored first).
SweepProgress = Callable[[int, int], None]


def quantized_weights(weights: MutableMapping[str, torch.Tensor], qtype: str,
                      importance: Callable[[str], torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
    """The block's 2-D weights after a round trip through ``qtype``, as float32 on their device;
    quantized with ``importance(name)`` (an imatrix's column importances) where given.

    float32, not the weight's dtype: a bf16 copy would round the dequantized values again
    and measure a type that does not exist. The block casts them as it casts any weight."""
    out = {}
    for name, w in weights.items():
        if w.dim() != 2:
            continue
        qtype_here = tensor_type(qtype, w.shape)
        imatrix = importance(name) if importance is not None else None
        raw = codecs.quantize(w.detach().to(torch.float32), qtype_here, imatrix=imatrix)
        out[name] = codecs.dequantize(raw, qtype_here, w.shape)
    return out


@dataclass
class _CleanRun:
    """One batch of samples through the unquantized stack: every block's input, the final output."""

    inputs: Any
    states: list[Any]
    output: torch.Tensor


def _clean_run(stack: BlockStack, inputs: Any) -> _CleanRun:
    states = [stack.start(inputs)]
    for b in range(stack.n_blocks):
        states.append(stack.forward(b, states[-1], inputs))
    return _CleanRun(inputs, states, stack.output(states[-1]).to(torch.float32))


def quantized_blocks(weights_of: Callable[[int], MutableMapping[str, torch.Tensor]], blocks: Sequence[int],
                     types: Sequence[str], progress: SweepProgress | None = None,
                     importance: Callable[[int, str], torch.Tensor | None] | None = None) -> Iterator[tuple[int, str]]:
    """Yields each (block, type) while that block's weights are swapped for their round trip
    through the type; the originals (the same tensor objects) are back before the next, and
    when the caller stops early or raises. ``progress`` is told after each. A ``weights_of(b)``
    that is a context manager is entered while its block is swept (to prepare the weights)."""
    total, done = len(blocks) * len(types), 0
    for b in blocks:
        weights = weights_of(b)
        with weights if isinstance(weights, contextlib.AbstractContextManager) else contextlib.nullcontext():
            for qtype in types:
                originals = {}
                try:
                    block_importance = None if importance is None else lambda name, b=b: importance(b, name)
                    for name, q in quantized_weights(weights, qtype, block_importance).items():
                        originals[name] = weights[name]
                        weights[name] = q
                    yield b, qtype
                finally:
                    weights.update(originals)
                done += 1
                if progress:
                    progress(done, total)


@torch.no_grad()
def sweep(stack: BlockStack, samples: Sequence[Any], types: Sequence[str], blocks: Iterable[int] | None = None,
          progress: SweepProgress | None = None,
          importance: Callable[[int, str], torch.Tensor | None] | None = None) -> SweepResult:
    """Costs of ``types`` at ``blocks`` (default all), summed over ``samples`` (the stack's inputs);
    each block's weights quantized with ``importance(block, name)`` where given."""
    if not samples:
        raise ValueError("the sweep needs at least one sample")
    blocks = list(range(stack.n_blocks) if blocks is None else blocks)
    runs = [_clean_run(stack, batch) for batch in stack.join(samples)]
    result = SweepResult({}, {}, len(runs) * stack.n_blocks)
    for b, qtype in quantized_blocks(stack.weights, blocks, types, progress, importance):
        sse, count = 0.0, 0
        for run in runs:
            state = run.states[b]
            for later in range(b, stack.n_blocks):
                state = stack.forward(later, state, run.inputs)
            sse, count = add_error(sse, count, stack.output(state), run.output)
        result.block_forwards += len(runs) * (stack.n_blocks - b)
        result.sse[(b, qtype)], result.count[(b, qtype)] = sse, count
    return result


def add_error(sse: float, count: int, got: torch.Tensor, clean: torch.Tensor) -> tuple[float, int]:
    """``sse`` and ``count`` with the squared error of ``got`` against ``clean`` (float32) added."""
    err = got.to(torch.float32) - clean
    return sse + float(torch.sum(err * err, dtype=torch.float64)), count + err.numel()
