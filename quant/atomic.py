"""Safe files: writes that either complete or leave nothing (a temp file beside the target, then
rename), names that stay names, and document reads that fail in one line naming the file."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


class UnsafeNameError(ValueError):
    """A file name that could leave its folder, hide, or mean another file."""


def checked_name(name: str) -> str:
    """A user-chosen file name, returned unchanged, or refused: a name, never a path.

    No separators, no ``..``, no absolute or drive paths, no hidden or control
    characters; nothing is quietly rewritten, so the file is where the user expects it.
    """
    why = None
    if not name or not name.strip():
        why = "it is empty"
    elif name != name.strip():
        why = "it starts or ends with blanks"
    elif "/" in name or "\\" in name or ":" in name:
        why = "it contains a path separator (a name is wanted, not a path)"
    elif ".." in name:
        why = "it contains '..'"
    elif name.startswith(("~", ".")):
        why = "it starts with '.' or '~'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "it contains control characters"
    elif len(name.encode()) > 200:
        why = "it is longer than 200 bytes"
    if why:
        raise UnsafeNameError(f"file name {name!r} refused: {why}")
    return name


def check_target(path: Path, overwrite: bool = False) -> None:
    """Refuse a target whose folder is missing, or that exists (unless ``overwrite``)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it to ``path``.

    On any error (or interrupt) the temp file is removed and the target is untouched.
    """
    path = Path(path)
    check_target(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes it 0600; the result should be an ordinary file
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:  # link fails if the target appeared meanwhile: never clobbers
            try:
                os.link(tmp, path)
                tmp.unlink()
            except FileExistsError:
                raise FileExistsError(f"{path} appeared while writing; not overwriting it") from None
            except OSError:  # no hard links on this filesystem (FAT, some network shares)
                check_target(path)
                os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, overwrite: bool = True) -> None:
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_new(path: Path, write: Callable[[Path], T], tries: int = 999) -> T:
    """``write(path)``, or, where that file exists, ``write(<stem>_2<suffix>)``, ``_3``...

    ``write`` must refuse an existing target with FileExistsError (as ``atomic_output``
    does before any work), so a file is never replaced, even one that appears meanwhile."""
    for n in range(1, tries + 1):
        try:
            return write(path if n == 1 else path.with_name(f"{path.stem}_{n}{path.suffix}"))
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent} already holds {path.name} and {tries - 1} numbered copies")


def load_document(path: str | os.PathLike[str], parse: Callable[[IO[str]], Any],
                  syntax_error: type[Exception] | tuple[type[Exception], ...], not_parsed: str,
                  build: Callable[[Any], T], error: type[Exception]) -> T:
    """``build`` of the document ``parse`` reads at ``path``; ``error``, in one line naming the file,
    where ``parse`` raises ``syntax_error`` (``not_parsed`` says what it is not) or ``build`` refuses it."""
    try:
        with open(path, encoding="utf-8") as f:
            data = parse(f)
    except syntax_error as e:
        raise error(f"{path}: {not_parsed} ({e})") from None
    try:
        return build(data)
    except error as e:
        raise error(f"{Path(path).name}: {e}") from None


def load_json(path: str | os.PathLike[str], build: Callable[[Any], T], error: type[Exception]) -> T:
    """``load_document`` for JSON. NaN and Infinity parse as floats: ``build`` judges them."""
    return load_document(path, json.load, json.JSONDecodeError, "not JSON", build, error)
