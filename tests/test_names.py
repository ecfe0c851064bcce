"""User-chosen file names (costs files, saved models) are names, never paths; taken ones get a number."""
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


def test_write_new_takes_the_next_free_number(tmp_path) -> None:
    from quant.atomic import atomic_write_text, write_new

    for _ in range(3):
        write_new(tmp_path / "m.gguf", lambda p: atomic_write_text(p, "x", overwrite=False))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m_2.gguf", "m_3.gguf"]
