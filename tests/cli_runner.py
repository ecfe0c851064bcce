"""The command line run in this process, as ``python -m quant ARGS`` runs it, without a fresh
interpreter (and torch import) per call. One test still runs it as a subprocess."""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from quant.__main__ import main


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return Ran(code, out.getvalue(), err.getvalue())
