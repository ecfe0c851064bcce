"""Importance matrices: per weight, the sum of squares of each input column and how many rows
(tokens) were summed, in llama.cpp's GGUF imatrix format.

A file holds, for every weight it covers, ``<tensor>.in_sum2`` (float32, one value per input
column) and ``<tensor>.counts`` (float32, the rows summed), under the tensor names of this
pack's GGUF files (``double_blocks.0.img_attn.qkv.weight``), with ``general.type = imatrix``,
``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size``. The quantizers take
the mean square of each column (sum / count) as its importance. Files of one model add up.

stable-diffusion.cpp (and llama.cpp before its GGUF format) writes the legacy ``.dat``
layout instead: int32 entry count; per entry its name (int32 length + bytes), ``ncall``
(int32) and its values (int32 count + float32 each, the mean square times ``ncall``); then
the call count and the dataset name. Importers divide by ``ncall``: stored here as sums
with count ``ncall``, which gives the same means. stable-diffusion.cpp names a diffusion model's
weight ``model.diffusion_model.<name>``: that prefix is dropped on import and added on export.
"""
from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from .models import COMFY_PREFIX
from .atomic import atomic_output

SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"


class ImatrixError(ValueError):
    """An importance matrix that is malformed, foreign, or of another model."""


@dataclass
class Imatrix:
    """Per weight name: float64 sums of squares of its input columns, and the rows summed."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0  # samples (captured steps) collected
    chunk_size: int = 1

    def add(self, name: str, x: torch.Tensor) -> None:
        """Add the rows of ``x`` (..., columns), the input of weight ``name``."""
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        squares = (rows * rows).sum(dim=0).cpu().numpy()
        if name in self.sums:
            if self.sums[name].shape != squares.shape:
                raise ImatrixError(f"{name}: {squares.shape[0]} input columns, earlier {self.sums[name].shape[0]}")
            self.sums[name] += squares
        else:
            self.sums[name] = squares
        self.counts[name] = self.counts.get(name, 0) + rows.shape[0]

    def importance(self, name: str) -> torch.Tensor | None:
        """The mean square of each input column of weight ``name``; None where the file has
        no entry for it or its count is 0 (it then quantizes without importance, as
        llama-quantize does for a weight it has no data for)."""
        count = self.counts.get(name, 0)
        if name not in self.sums or count == 0:
            return None
        return torch.from_numpy((self.sums[name] / count).astype(np.float32))

    def block_importance(self, block_name: Callable[[int], str]) -> Callable[[int, str], torch.Tensor | None]:
        """``importance`` by block index and block-relative weight name (as the sweep and the
        stacks name them), ``block_name`` giving a block's prefix (``Model.block_name``)."""
        return lambda block, name: self.importance(f"{block_name(block)}.{name}")

    def merged(self, other: Imatrix) -> Imatrix:
        out = Imatrix({k: v.copy() for k, v in self.sums.items()}, dict(self.counts),
                      self.datasets + [d for d in other.datasets if d not in self.datasets],
                      self.chunk_count + other.chunk_count, self.chunk_size)
        for name, sums in other.sums.items():
            if name in out.sums and out.sums[name].shape != sums.shape:
                raise ImatrixError(f"{name}: {sums.shape[0]} input columns here, {out.sums[name].shape[0]} there: "
                                   f"importance matrices of different models")
            out.sums[name] = out.sums[name] + sums if name in out.sums else sums.copy()
            out.counts[name] = out.counts.get(name, 0) + other.counts[name]
        return out

    def check_model(self, shapes: Mapping[str, Sequence[int]]) -> None:
        """Refuse an importance matrix of another model: every entry must name a weight of
        ``shapes`` (GGUF names) with as many input columns."""
        for name, sums in self.sums.items():
            shape = shapes.get(name)
            if shape is None:
                raise ImatrixError(f"the importance matrix has {name!r}, which this model does not: "
                                   f"it was collected on another model")
            if len(shape) != 2 or shape[-1] != sums.shape[0]:
                raise ImatrixError(f"{name}: the importance matrix has {sums.shape[0]} input columns, the model's "
                                   f"weight is {tuple(shape)}: it was collected on another model")

    def describe(self) -> str:
        return (f"{len(self.sums)} weights, {self.chunk_count} samples"
                + (f" ({', '.join(self.datasets)})" if self.datasets else ""))


DAT_PREFIX = COMFY_PREFIX  # stable-diffusion.cpp names a model's weights as ComfyUI's checkpoints do


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read an importance matrix: llama.cpp's GGUF format, or the legacy ``.dat`` one (by its
    first bytes); ImatrixError (one line) for anything else."""
    name = Path(path).name
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        return _load_dat(Path(path))
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise ImatrixError(f"{name}: not a readable GGUF file ({e})") from None
    kind = _field(reader, "general.type")
    if kind != "imatrix":
        raise ImatrixError(f"{name}: a GGUF of type {kind!r}, not an importance matrix (general.type = imatrix)")
    tensors = {t.name: t for t in reader.tensors}
    out = Imatrix(datasets=list(_field(reader, "imatrix.datasets") or []),
                  chunk_count=int(_field(reader, "imatrix.chunk_count") or 0),
                  chunk_size=int(_field(reader, "imatrix.chunk_size") or 1))
    for tname, t in tensors.items():
        if not tname.endswith(SUM_SUFFIX):
            continue
        weight = tname[: -len(SUM_SUFFIX)]
        counts = tensors.get(weight + COUNT_SUFFIX)
        if counts is None:
            raise ImatrixError(f"{name}: {weight} has sums but no counts")
        sums = np.asarray(t.data, dtype=np.float64).reshape(-1)
        count = np.asarray(counts.data, dtype=np.float64).reshape(-1)
        if count.size != 1:
            raise ImatrixError(f"{name}: {weight} holds {count.size} matrices (stacked expert weights?); one is expected per weight")
        if not (np.isfinite(sums).all() and np.isfinite(count).all()) or count[0] < 0 or (sums < 0).any():
            raise ImatrixError(f"{name}: {weight} holds NaN, infinite or negative values")
        out.sums[weight], out.counts[weight] = sums, int(count[0])
    if not out.sums:
        raise ImatrixError(f"{name}: an importance matrix with no entries")
    return out


def _field(reader: gguf.GGUFReader, key: str) -> object:
    f = reader.get_field(key)
    if f is None:
        return None
    return f.contents()


def save_imatrix(imatrix: Imatrix, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Write ``imatrix`` atomically in llama.cpp's GGUF imatrix format."""
    with atomic_output(path, overwrite) as tmp:
        writer = gguf.GGUFWriter(tmp, arch="")
        try:  # closed on every path: the temp file is renamed, or removed, only once released
            writer.add_type("imatrix")
            writer.add_array("imatrix.datasets", imatrix.datasets or ["mxgguf"])
            writer.add_uint32("imatrix.chunk_count", imatrix.chunk_count)
            writer.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
            for name in sorted(imatrix.sums):
                writer.add_tensor(name + SUM_SUFFIX, imatrix.sums[name].astype(np.float32)[None, :])
                writer.add_tensor(name + COUNT_SUFFIX, np.array([[float(imatrix.counts[name])]], dtype=np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    load_imatrix(path)  # read back


def add_to_file(path: str | os.PathLike[str], imatrix: Imatrix) -> Imatrix:
    """Add ``imatrix`` to the file at ``path`` (created if missing), atomically."""
    total = load_imatrix(path).merged(imatrix) if Path(path).exists() else imatrix
    save_imatrix(total, path, overwrite=True)
    return total



@contextlib.contextmanager
def linear_inputs(model: torch.nn.Module, weights: Iterable[str], into: Imatrix) -> Iterator[None]:
    """While inside, every call of the linear layers owning ``weights`` (``<module>.weight`` names
    in ``model``) adds its input's rows to ``into``. The hooks only read: outputs are unchanged.
    Sums stay on the layer's device in float32 until the end (no synchronisation per call)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        squares = (rows * rows).sum(dim=0)
        sums[name] = squares if name not in sums else sums[name] + squares
        counts[name] = counts.get(name, 0) + rows.shape[0]

    handles = [model.get_submodule(w.removesuffix(".weight")).register_forward_pre_hook(
        lambda _module, args, name=w: hook(name, args[0])) for w in weights]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    for name, total in sums.items():
        into.sums[name] = into.sums.get(name, 0.0) + total.double().cpu().numpy()
        into.counts[name] = into.counts.get(name, 0) + counts[name]


def _load_dat(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ImatrixError(f"{path.name}: not an importance matrix (neither GGUF nor a complete .dat file)")
        pos += size
        return struct.unpack_from(fmt, data, pos - size)

    (n_entries,) = take("<i")
    if not 0 < n_entries < 1_000_000:
        raise ImatrixError(f"{path.name}: not an importance matrix (neither GGUF nor a .dat file)")
    out = Imatrix()
    for _ in range(n_entries):
        (length,) = take("<i")
        if not 0 < length < 4096:
            raise ImatrixError(f"{path.name}: not an importance matrix (a name of {length} bytes)")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", errors="replace").removeprefix(DAT_PREFIX)
        ncall, nval = take("<ii")
        values = np.asarray(take(f"<{nval}f"), dtype=np.float64)
        if ncall < 0 or not np.isfinite(values).all() or (values < 0).any():
            raise ImatrixError(f"{path.name}: {name} holds NaN, infinite or negative values")
        out.sums[name], out.counts[name] = values, ncall
    if pos + 4 <= len(data):
        (out.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                out.datasets = [bytes(take(f"<{length}s")[0]).decode("utf-8", errors="replace")]
    return out


def save_imatrix_dat(imatrix: Imatrix, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Write ``imatrix`` in the legacy ``.dat`` layout stable-diffusion.cpp reads, atomically."""
    parts = [struct.pack("<i", len(imatrix.sums))]
    for name in sorted(imatrix.sums):
        encoded = (DAT_PREFIX + name).encode()
        values = imatrix.sums[name].astype(np.float32)
        parts += [struct.pack("<i", len(encoded)), encoded,
                  struct.pack("<ii", imatrix.counts[name], values.size), values.tobytes()]
    dataset = (imatrix.datasets[0] if imatrix.datasets else "").encode()
    parts += [struct.pack("<i", imatrix.chunk_count), struct.pack("<i", len(dataset)), dataset]
    with atomic_output(path, overwrite) as tmp:
        tmp.write_bytes(b"".join(parts))
    _load_dat(Path(path))  # read back
