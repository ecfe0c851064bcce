"""Source checkpoints, read one tensor at a time.

Safetensors files are read with plain reads, not mmap: mapped pages of a file
count towards the process's resident memory until unmapped, so streaming a 24 GB model
through a mapping would look (and, under pressure, act) like holding it. A read fills a
buffer for one tensor and nothing else stays resident. The header is checked up front, so
a corrupt or truncated file is refused before any output exists.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 2**20  # the safetensors format's own limit


class CheckpointError(ValueError):
    """A source checkpoint that cannot be used: corrupt, truncated or holding bad values."""


@dataclass
class Source:
    """A checkpoint whose tensors are read on demand."""

    name: str
    shapes: dict[str, tuple[int, ...]]
    read: Callable[[str], torch.Tensor]
    # The file's SHA-256 when called: hashed on a thread from opening, so it overlaps the work.
    sha256: Callable[[], str] | None = None
    dtypes: dict[str, torch.dtype] | None = None
    # Rows start..stop-1 of a tensor without reading the rest, where the source can.
    read_rows: Callable[[str, int, int], torch.Tensor] | None = None
    # Under weight patches (``quant.patches``): the checkpoint patched, which identifies the model.
    base: Source | None = None

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start..stop-1`` (along the first axis) of tensor ``key``."""
        return self.read_rows(key, start, stop) if self.read_rows else self.read(key)[start:stop]


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def _read_header(f, name: str, file_size: int) -> dict[str, _Entry]:
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{name} is not a readable safetensors file (corrupt or truncated?): {why}")

    if file_size < 8:
        raise bad(f"only {file_size} bytes")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(_MAX_HEADER, file_size - 8):
        raise bad(f"header length {n} does not fit a {file_size}-byte file")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = file_size - 8 - n
    entries = {}
    for key, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {key!r} has a malformed entry {info!r}") from None
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * dtype.itemsize or start < 0:
            raise bad(f"tensor {key!r}: {end - start} bytes for shape {shape} {info['dtype']}")
        if end > data_size:
            raise bad(f"tensor {key!r} ends at byte {end} of the data, which has only {data_size} "
                      f"(the file is truncated)")
        entries[key] = _Entry(dtype, shape, 8 + n + start, 8 + n + end)
    return entries


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike[str], hash_file: bool = True) -> Iterator[Source]:
    """Open a safetensors checkpoint for reading tensor by tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with open(path, "rb", buffering=0) as f:
        entries = _read_header(f, path.name, os.fstat(f.fileno()).st_size)

        def read_bytes(key: str, start: int, stop: int) -> torch.Tensor:
            buf = torch.empty(stop - start, dtype=torch.uint8)
            f.seek(start)
            got = f.readinto(memoryview(buf.numpy())) if buf.numel() else 0
            if got != buf.numel():
                raise CheckpointError(f"{path.name}: {key} is cut short ({got} of {buf.numel()} bytes)")
            return buf

        def read(key: str) -> torch.Tensor:
            e = entries[key]
            return read_bytes(key, e.start, e.end).view(e.dtype).reshape(e.shape)

        def read_rows(key: str, start: int, stop: int) -> torch.Tensor:
            e = entries[key]
            row = (e.end - e.start) // e.shape[0]
            stop = min(stop, e.shape[0])
            return read_bytes(key, e.start + start * row, e.start + stop * row).view(e.dtype).reshape(-1, *e.shape[1:])

        with _hashing(path) if hash_file else contextlib.nullcontext() as sha256:
            yield Source(path.name, {k: e.shape for k, e in entries.items()}, read, sha256,
                         {k: e.dtype for k, e in entries.items()}, read_rows)


@contextlib.contextmanager
def _hashing(path: Path) -> Iterator[Callable[[], str]]:
    """The file's SHA-256 computed on a thread (hashlib and reads release the GIL); stopped
    at exit if nobody waited for it."""
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="mxgguf-sha256") as pool:
        digest = pool.submit(file_sha256, path, stop=stop)
        try:
            yield digest.result
        finally:
            stop.set()


def state_dict_source(state_dict: Mapping[str, torch.Tensor], name: str) -> Source:
    """A checkpoint already in memory (e.g. a ComfyUI model's weights)."""
    return Source(name, {k: tuple(v.shape) for k, v in state_dict.items()}, state_dict.__getitem__,
                  dtypes={k: v.dtype for k, v in state_dict.items()})


def file_sha256(path: Path, chunk: int = 1 << 24, stop: threading.Event | None = None) -> str | None:
    """The file's SHA-256 (hex); None if ``stop`` was set before the end."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if stop is not None and stop.is_set():
                return None
            h.update(block)
    return h.hexdigest()
