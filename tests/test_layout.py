"""The README's layout table names every module of the pack, and nothing that is gone."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout_rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]


def _named(rows: list[str]) -> set[str]:
    """Paths the first column names; ``nodes/a.py``, ``b.py`` continues the folder of the first."""
    names = set()
    for cell in rows:
        folder = ""
        for path in re.findall(r"`([^`]+)`", cell):
            if "/" in path.rstrip("/"):
                folder = path.rsplit("/", 1)[0] + "/"
                names.add(path)
            else:
                names.add(path if path.endswith("/") else folder + path)
    return names


def test_layout_table_matches_the_tree() -> None:
    named = _named(_layout_rows())
    modules = {f"{d}/{p.name}" for d in ("quant", "nodes") for p in (ROOT / d).glob("*.py") if p.name != "__init__.py"}
    folders = {f"{p.relative_to(ROOT).as_posix()}/" for p in (ROOT / "quant").iterdir()
               if p.is_dir() and not p.name.startswith("__")}
    assert sorted((modules | folders) - named) == [], "modules missing from the README's layout table"
    gone = [n for n in named if not (ROOT / n).exists()]
    assert gone == [], "the README's layout table names paths that do not exist"


def test_every_type_has_a_colour_of_its_own() -> None:
    """The chart and the canvas panel colour a type the same in every plan; no two types alike
    (read from nodes/chart.py, which imports ComfyUI's side of the pack)."""
    import ast

    from quant import codecs

    tree = ast.parse((ROOT / "nodes" / "chart.py").read_text(encoding="utf-8"))
    (colours,) = [ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "TYPE_COLOURS"]
    assert sorted(colours) == sorted(codecs.TYPE_NAMES)
    assert len(set(colours.values())) == len(colours)
