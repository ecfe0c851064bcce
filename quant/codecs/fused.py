"""Search steps fused into one CPU kernel by ``torch.compile``, where it can build one.

The K-quants' searches make ~20 passes over every value per candidate scale. Run op by op
on a CPU, each pass goes through memory and the in-order sums cost one torch call per
position; inductor's C++ kernel does the whole step in registers, 3-4x faster. The
kernels stay byte-exact: the sums are written as explicit in-order additions (no
reductions for inductor to reorder), inductor keeps divisions on the CPU, and compiles
with ``-ffp-contract=off`` (no fused multiply-adds).

On a GPU the step runs as written (already fast there; Triton would fuse multiply-adds).
Without a C++ compiler, or with ``MXGGUF_COMPILE=0``, too: the first failure is reported
once and the plain step is used from then on. The first call of each step compiles it
(tens of seconds; inductor caches the kernel on disk for later processes).
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
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


def cpu_fused(step: F) -> F:
    """``step`` compiled for CPU tensors (its first argument decides), else ``step`` itself.

    A first argument whose last dimension is 0 or 1 runs plain too: torch.compile would
    build a separate kernel for those sizes, not worth its compile time."""
    compiled = torch.compile(step, dynamic=True, options=_OPTIONS)
    broken: list[str] = []

    @functools.wraps(step)
    def run(*args, **kwargs):
        if args[0].is_cuda or args[0].shape[-1] <= 1 or broken or not enabled():
            return step(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as e:  # no compiler, unsupported platform: the plain step is exact too
            broken.append(f"{type(e).__name__}: {e}")
            log.warning("mxgguf: torch.compile is unavailable for %s (%s); using the slower plain steps",
                        step.__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return step(*args, **kwargs)

    return run  # type: ignore[return-value]
