"""Search steps fused into one CPU kernel, built once per machine by AOTInductor.

The K-quants' searches make ~20 passes over every value per candidate scale. Run op by op
on a CPU, each pass goes through memory and the in-order sums cost one torch call per
position; inductor's C++ kernel does the whole step in registers, several times faster
(2-6x by type: ``bench/codecs.py`` with and without ``MXGGUF_COMPILE=0``). The kernels
stay byte-exact: the sums are written as explicit in-order additions (no reductions for
inductor to reorder), inductor keeps divisions on the CPU, and compiles with
``-ffp-contract=off`` (no fused multiply-adds).

Each step is exported and compiled ahead of time (``torch.export`` + AOTInductor) into a
package in a cache folder, once per machine, step, argument shapes and code version; a
later process loads it in milliseconds through torch's C++ loader. ``torch.compile`` would
import dynamo and inductor (3-4 s) and trace every step again (3-7 s a type) in every
process, kernels cached or not.

On a GPU the step runs as written (the GPU has its own Triton kernels). So it does for
tensors under ``MIN_ELEMENTS`` values, without a C++ compiler or torch >= 2.6, or with
``MXGGUF_COMPILE=0``: a failure to build is reported once per step and the plain step is
used from then on.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils import _pytree as pytree

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., object])


def enabled() -> bool:
    return os.environ.get("MXGGUF_COMPILE", "1") != "0"


# Pinned whatever the process's inductor settings: exactness needs no contraction and no
# unsafe math; a min chunk of 1 keeps kernels multi-threaded for any size of tensor.
_OPTIONS = {
    "cpp.enable_floating_point_contract_flag": "off",
    "cpp.enable_unsafe_math_opt_flag": False,
    "cpp.min_chunk_size": 1,
}


# Smaller tensors are quantized with plain steps: a chunk is padded to the one shape the
# kernel is built for, which would multiply a small tensor's work.
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
    return x.device.type == "cpu" and numel >= MIN_ELEMENTS and enabled()


def kernel_dir() -> Path:
    """Where built kernels are kept: ``MXGGUF_KERNEL_DIR``, else the user's cache folder."""
    if env := os.environ.get("MXGGUF_KERNEL_DIR"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mxgguf" / "kernels"


@functools.cache
def _code_version() -> str:
    """A digest of the codecs' sources: a step's kernel is only as current as the code it came from."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


@functools.cache
def _cpu() -> str:
    """The processor a kernel is built for: inductor compiles for the host's own instruction
    set, so a kernel folder shared with another model of CPU must not hand its kernels over."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the name the platform gives
        info = []
    model = next((line for line in info if line.startswith("model name")), "")
    flags = next((line for line in info if line.startswith("flags")), "")
    return " ".join((platform.machine(), platform.processor(), torch.backends.cpu.get_cpu_capability(), model, flags))


def cpu_fused(step: F | None = None, *, dynamic: bool = False) -> F:
    """``step`` as a compiled kernel for CPU tensors (its first argument decides) of a large
    tensor being quantized, else ``step`` itself. A first argument whose last dimension is
    0 or 1 runs plain too. Tensor arguments are made contiguous; the others (numbers, flags,
    None) are built into the kernel, one kernel per combination.

    Built for static shapes (``codecs.quantize`` gives every chunk the same). ``dynamic``:
    the last dimension of every tensor argument is one size that varies from call to call."""
    if step is None:
        return functools.partial(cpu_fused, dynamic=dynamic)  # type: ignore[return-value]
    kernels: dict[tuple[Any, ...], Callable[[Sequence[Any]], Any]] = {}
    broken: list[str] = []
    lock = threading.Lock()

    @functools.wraps(step)
    def run(*args):
        x = args[0]
        if (not getattr(_tensor, "large", False) or x.device.type != "cpu" or x.shape[-1] <= 1 or broken
                or not enabled()):
            return step(*args)
        signature = _signature(args, dynamic)
        kernel = kernels.get(signature)
        if kernel is None:
            with lock:
                if broken:  # another thread's build failed while this one waited
                    return step(*args)
                try:
                    kernel = kernels.get(signature) or _kernel(step, args, signature, dynamic)
                except Exception as e:  # no compiler, an old torch: the plain step is exact too
                    broken.append(f"{type(e).__name__}: {e}")
                    log.warning("mxgguf: could not build a kernel for %s (%s); using the slower plain steps",
                                step.__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
                    return step(*args)
                kernels[signature] = kernel
        return kernel(args)

    run.runs_compiled = lambda: bool(kernels) and not broken  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


def _signature(args: Sequence[Any], dynamic: bool) -> tuple[Any, ...]:
    """What a kernel is built for: each tensor's dtype and shape (the last dimension left
    open where ``dynamic``), every other argument's type and value. Made on every call: kept cheap."""
    return tuple((a.dtype, a.shape[:-1] if dynamic else a.shape) if isinstance(a, torch.Tensor) else (type(a), a)
                 for a in args)


def _kernel(step: Callable[..., Any], args: Sequence[Any], signature: tuple[Any, ...],
            dynamic: bool) -> Callable[[Sequence[Any]], Any]:
    """The step's kernel for ``args``, built into the kernel folder if it is not there yet."""
    key = repr((step.__module__, step.__qualname__, signature, _code_version(), torch.__version__, _cpu(),
                torch.get_num_threads(), _OPTIONS))
    folder = kernel_dir() / f"torch{torch.__version__}-{_code_version()[:12]}"  # one to delete per version
    path = folder / f"{step.__name__.strip('_')}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt2"
    if not path.exists():
        _build(step, args, dynamic, path)
    try:
        loader = _load(path)
    except RuntimeError:  # a damaged package (a crash after the rename, a full disk): built once more
        log.warning("mxgguf: %s could not be loaded; building it again", path)
        _build(step, args, dynamic, path)
        loader = _load(path)
    out_spec = pytree.treespec_loads(loader.get_call_spec()[1])

    def call(call_args: Sequence[Any]) -> Any:
        return pytree.tree_unflatten(loader.run(_kernel_inputs(call_args)), out_spec)

    return call


def _kernel_inputs(args: Sequence[Any]) -> list[torch.Tensor]:
    return [a.contiguous() for a in args if isinstance(a, torch.Tensor)]


class _BoundStep(torch.nn.Module):
    """``step`` with its non-tensor arguments fixed: what is exported takes tensors alone."""

    def __init__(self, step: Callable[..., Any], args: Sequence[Any]) -> None:
        super().__init__()
        self.step = step
        self.fixed = [None if isinstance(a, torch.Tensor) else (a,) for a in args]  # None: a tensor's place

    def forward(self, *tensors: torch.Tensor) -> Any:
        given = iter(tensors)
        return self.step(*(next(given) if a is None else a[0] for a in self.fixed))


def _build(step: Callable[..., Any], args: Sequence[Any], dynamic: bool, path: Path) -> None:
    """Export ``step`` for ``args`` and compile it ahead of time into the package ``path``
    (written beside it, then renamed: a reader never sees a partial file)."""
    from torch._inductor import aoti_compile_and_package  # seconds to import, only when building; torch >= 2.6

    log.info("mxgguf: building the kernel for %s (once per machine; up to a minute)", step.__name__)
    # copies: export takes a tensor given twice as one input, and later calls need not repeat it
    tensors = tuple(t.clone() for t in _kernel_inputs(args))
    shapes = None
    if dynamic:
        size = torch.export.Dim("size", min=2)
        shapes = (tuple({t.dim() - 1: size} for t in tensors),)  # one entry: forward's *tensors
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.export.export(_BoundStep(step, args), tensors, dynamic_shapes=shapes)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.pt2")
    try:
        with warnings.catch_warnings():  # torch's own deprecation notices, of no use to a user
            warnings.simplefilter("ignore", FutureWarning)
            aoti_compile_and_package(program, package_path=str(partial), inductor_configs=dict(_OPTIONS))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _load(path: Path) -> Any:
    """The package's runner, through torch's C++ loader: importing the Python one
    (``torch._inductor.package``) would cost over a second in every process."""
    try:
        return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    except (AttributeError, TypeError):  # the private constructor moved or changed: the public route
        from torch._inductor.package import load_package

        return load_package(str(path)).loader
