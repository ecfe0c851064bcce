"""User-chosen file names (costs files, saved models) are names, never paths."""
from __future__ import annotations

import pytest

from quant.atomic import UnsafeNameError, checked_name

HOSTILE = ["", "  ", "../evil", "..", "a/../../b", "/etc/passwd", "sub/dir", "C:\\x", "c:evil", "..\\x",
           ".hidden", "~root", "a\x00b", "line\nbreak", " lead", "x" * 201]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError, match="refused"):
        checked_name(name)


@pytest.mark.parametrize("name", ["flux1-dev", "flux1-dev_mx6_9.gguf", "my costs (v2).json", "Flüx"])
def test_ordinary_names_pass_unchanged(name: str) -> None:
    assert checked_name(name) == name
