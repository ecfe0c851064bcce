"""Search steps fused into one CPU kernel by ``torch.compile``, where it can build one.

The K-quants' searches make ~20 passes over every value per candidate scale. Run op by op
on a CPU, each pass goes through memory and the in-order sums cost one torch call per
position; inductor's C++ kernel does the whole step in registers, several times faster
(2-6x by type: ``bench/codecs.py`` with and without ``MXGGUF_COMPILE=0``). The kernels
stay byte-exact: the sums are written as explicit in-order additions (no reductions for
inductor to reorder), inductor keeps divisions on the CPU, and compiles with
``-ffp-contract=off`` (no fused multiply-adds).

On a GPU the step runs as written (already fast there; Triton would fuse multiply-adds).
So it does for tensors under ``MIN_ELEMENTS`` values, without a C++ compiler, or with
``MXGGUF_COMPILE=0``: a failure to compile is reported once and the plain step is used
from then on. The first call of each step compiles it (seconds to a minute; inductor
caches the kernel on disk for later processes).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., object])


def enabled() -> bool:
    return os.environ.get("MXGGUF_COMPILE", "1") != "0"


# Pinned whatever the process's inductor settings: exactness needs no contraction and no
# unsafe math; a min chunk of 1 keeps kernels multi-threaded even when first compiled for
# a small tensor (the sizes seen first are the hints its threading is decided on).
_OPTIONS = {
    "cpp.enable_floating_point_contract_flag": "off",
    "cpp.enable_unsafe_math_opt_flag": False,
    "cpp.min_chunk_size": 1,
}


# Smaller tensors are quantized with plain steps: in a fresh process, even fetching the
# cached kernels costs seconds, more than the plain steps take on them.
MIN_ELEMENTS = 1 << 22
_tensor = threading.local()


@contextlib.contextmanager
def quantizing(numel: int) -> Iterator[None]:
    """Steps run within may be fused: a tensor of ``numel`` values is being quantized."""
    outer = getattr(_tensor, "large", False)
    _tensor.large = numel >= MIN_ELEMENTS
    try:
        yield
    finally:
        _tensor.large = outer


def compiles(x: torch.Tensor, numel: int) -> bool:
    """Whether the steps of quantizing ``x`` (``numel`` values) run compiled: then every chunk
    must have the one shape they were built for."""
    return not x.is_cuda and numel >= MIN_ELEMENTS and enabled()


def cpu_fused(step: F | None = None, *, dynamic: bool = False) -> F:
    """``step`` compiled for CPU tensors (its first argument decides) of a large tensor
    being quantized, else ``step`` itself. A first argument whose last dimension is 0 or 1
    runs plain too: torch.compile would build a separate kernel for those sizes.

    Built for static shapes (``codecs.quantize`` gives every chunk the same): tracing with
    symbolic shapes takes ~10x longer, and tracing is paid in every process, cached
    kernels or not. ``dynamic``: for a step whose shapes vary from call to call."""
    if step is None:
        return functools.partial(cpu_fused, dynamic=dynamic)  # type: ignore[return-value]
    compiled: list[Callable[..., object]] = []  # made on first use: importing torch's compiler takes seconds
    broken: list[str] = []

    @functools.wraps(step)
    def run(*args, **kwargs):
        x = args[0]
        if not getattr(_tensor, "large", False) or x.is_cuda or x.shape[-1] <= 1 or broken or not enabled():
            return step(*args, **kwargs)
        try:
            if not compiled:
                compiled.append(torch.compile(step, dynamic=dynamic, options=_OPTIONS))
            return compiled[0](*args, **kwargs)
        except Exception as e:  # no compiler, unsupported platform: the plain step is exact too
            broken.append(f"{type(e).__name__}: {e}")
            log.warning("mxgguf: torch.compile is unavailable for %s (%s); using the slower plain steps",
                        step.__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return step(*args, **kwargs)

    run.runs_compiled = lambda: bool(compiled) and not broken  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]
