"""GGUF files: a plan's tensors streamed into one, atomically, read back; and what one holds.

The header (names, shapes, types, offsets) follows from the plan before any data, so each
tensor's bytes are asked for, written, then dropped: memory holds one tensor and its bytes,
never the model. The file is written under a temp name beside the target, read back and
checked, and only then renamed into place.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import yaml

from .models import detect, family
from .atomic import atomic_output
from .patches import LORAS_KEY, lora_records, parse_loras
from .recipe import Recipe, recipe_yaml
from .tensor_plan import TensorPlan, average_bpw

PACK_KEY = "mxgguf"  # our metadata namespace
PACK_VERSION = "0.1.0"
ProgressFn = Callable[[int, int, str], None]  # (params done, params total, tensor key)


class GGUFWriteError(OSError):
    """Writing the GGUF failed; nothing was left at the target."""


def _file_type(plan: Sequence[TensorPlan]) -> int:
    """general.file_type for the type holding most parameters (a mixed file has no code of its own)."""
    params: Counter[str] = Counter()
    for t in plan:
        params[t.qtype] += t.numel
    dominant = params.most_common(1)[0][0]
    name = {"F32": "ALL_F32", "Q3_K": "MOSTLY_Q3_K_S", "Q4_K": "MOSTLY_Q4_K_S",
            "Q5_K": "MOSTLY_Q5_K_S"}.get(dominant, f"MOSTLY_{dominant}")
    return int(gguf.LlamaFileType[name])


@dataclass(frozen=True)
class WriteResult:
    path: Path
    size_bytes: int
    bpw: float
    n_tensors: int


def write_tensors(source_name: str, recipe: Recipe, plan: Sequence[TensorPlan],
                  encode: Callable[[TensorPlan], np.ndarray], out_path: str | os.PathLike[str], *,
                  source_sha256: Callable[[], str] | None = None, overwrite: bool = False,
                  progress: ProgressFn | None = None, extra_metadata: Mapping[str, str] | None = None,
                  quantize_metadata: Mapping[str, str | int] | None = None) -> WriteResult:
    """Write ``plan``'s tensors, each as the bytes ``encode(tensor)`` gives, atomically; read back.

    ``source_sha256`` is asked for only once the tensors are written (hashing a large source
    overlaps the work): the header holds a placeholder of the digest's length until then."""
    out_path = Path(out_path)
    bpw = average_bpw(plan)
    total = sum(t.numel for t in plan)
    done = 0
    with atomic_output(out_path, overwrite) as tmp:
        writer = gguf.GGUFWriter(tmp, family(recipe.family).gguf_arch)
        writer.add_name(Path(source_name).stem)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type(_file_type(plan))
        writer.add_string(f"{PACK_KEY}.version", PACK_VERSION)
        writer.add_string(f"{PACK_KEY}.family", recipe.family)
        writer.add_string(f"{PACK_KEY}.recipe", recipe_yaml(recipe))
        writer.add_float32(f"{PACK_KEY}.bpw", bpw)
        writer.add_string(f"{PACK_KEY}.source.name", source_name)
        placeholder = secrets.token_hex(32)  # as long as a SHA-256 in hex
        if source_sha256:
            writer.add_string(f"{PACK_KEY}.source.sha256", placeholder)
        for k, v in (extra_metadata or {}).items():
            writer.add_string(f"{PACK_KEY}.{k}", v)
        for k, v in (quantize_metadata or {}).items():  # llama.cpp's own keys, as they are
            if isinstance(v, str):
                writer.add_string(k, v)
            else:
                writer.add_int32(k, v)
        for t in plan:
            writer.add_tensor_info(t.key, t.shape, np.dtype(np.float32), t.nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType[t.qtype])
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for t in plan:
                writer.write_tensor_data(encode(t))
                release_freed_memory()
                done += t.numel
                if progress:
                    progress(done, total, t.key)
        except OSError as e:
            raise GGUFWriteError(e.errno, f"writing {out_path.name} failed after {done / total:.0%} "
                                          f"of the parameters: {e.strerror or e}; nothing was written") from e
        finally:  # on every path: the temp file is renamed, or removed, only once released
            writer.close()
        if source_sha256:
            _replace_in_header(tmp, placeholder, source_sha256())
        verify_gguf(tmp, plan)
    return WriteResult(out_path, out_path.stat().st_size, bpw, len(plan))


def _replace_in_header(path: Path, old: str, new: str) -> None:
    """Overwrite a string value of the header (same length) in place."""
    assert len(old) == len(new)
    with open(path, "r+b") as f:
        head = f.read(1 << 24)  # the header: metadata and tensor infos
        at = head.find(old.encode())
        if at < 0:
            raise GGUFWriteError(f"{path.name}: placeholder not found in the header")
        f.seek(at)
        f.write(new.encode())


def _glibc_trim() -> Callable[[], None]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    return lambda: trim(0)


# Each tensor leaves freed blocks of its own sizes in glibc's heap, which it keeps; without
# handing them back, resident memory creeps up with the number of tensors converted.
release_freed_memory = _glibc_trim()


def verify_gguf(path: str | os.PathLike[str], plan: Sequence[TensorPlan]) -> None:
    """Read the file back: every planned tensor present with its name, type and shape."""
    reader = gguf.GGUFReader(path)
    found = {t.name: t for t in reader.tensors}
    problems = []
    for t in plan:
        r = found.pop(t.key, None)
        if r is None:
            problems.append(f"{t.key} missing")
        elif r.tensor_type.name != t.qtype or tuple(int(v) for v in reversed(r.shape)) != t.shape:
            problems.append(f"{t.key}: {r.tensor_type.name} {tuple(reversed(r.shape))}, planned {t.qtype} {t.shape}")
    problems += [f"{k} not planned" for k in found]
    if problems:
        raise GGUFWriteError(f"read-back of {Path(path).name} failed: " + "; ".join(problems[:5]))


def read_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a GGUF holds: types per block, size, bits per parameter, our metadata."""
    reader = gguf.GGUFReader(path)
    shapes = {t.name: tuple(int(v) for v in reversed(t.shape)) for t in reader.tensors}
    model = detect(shapes)
    per_block: list[Counter[str]] = [Counter() for _ in range(model.n_blocks)]
    type_params: Counter[str] = Counter()
    data_bytes = params = 0
    for t in reader.tensors:
        n = int(t.n_elements)
        params += n
        data_bytes += int(t.n_bytes)
        type_params[t.tensor_type.name] += n
        block = model.block_of(t.name)
        if block is not None and model.is_quantizable(t.name, shapes[t.name]):
            per_block[block][t.tensor_type.name] += n
    meta = {}
    for field in reader.fields.values():
        if field.name.startswith(f"{PACK_KEY}.") or field.name.startswith("general."):
            meta[field.name] = field.contents()
    return {
        "file": Path(path).name,
        "size_bytes": Path(path).stat().st_size,
        "model": model.describe(),
        "family": model.family.name,
        "n_tensors": len(reader.tensors),
        "params": params,
        "bpw": 8 * data_bytes / params,
        "blocks": ["+".join(sorted(c)) if c else "-" for c in per_block],
        "type_params": dict(type_params),
        "costs": _recipe_notes(meta).get("costs"),
        "loras": lora_records(parse_loras(meta.get(f"{PACK_KEY}.{LORAS_KEY}"))),
        "metadata": meta,
    }


def _recipe_notes(meta: dict[str, Any]) -> dict[str, Any]:
    """The notes of the recipe a file records (``mxgguf.recipe``), if any."""
    try:
        notes = yaml.safe_load(meta.get(f"{PACK_KEY}.recipe") or "{}").get("notes")
    except (yaml.YAMLError, AttributeError):
        return {}
    return notes if isinstance(notes, dict) else {}
