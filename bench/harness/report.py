"""What a bench prints and writes: tables, PASS/FAIL, the JSON in bench/results/."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


@dataclass(frozen=True)
class Column:
    """A table column: ``title``, ``width`` in characters, the values' format spec (e.g.
    ``",.0f"``); right-aligned unless ``left``."""

    title: str
    width: int
    format: str = ""
    left: bool = False

    def cell(self, value: Any) -> str:
        text = "?" if value is None else format(value, self.format)
        return f"{text:<{self.width}}" if self.left else f"{text:>{self.width}}"


def table(columns: Sequence[Column], rows: Iterable[Sequence[Any]], indent: str = "") -> str:
    """A header, a rule under it and one line per row (a row: one value per column)."""
    header = "".join(f"{c.title:{'<' if c.left else '>'}{c.width}}" for c in columns)
    lines = [indent + header, indent + "-" * len(header)]
    for row in rows:
        lines.append(indent + "".join(c.cell(v) for c, v in zip(columns, row, strict=True)))
    return "\n".join(lines)


def cores_cells(cores: Mapping[str, float | None], names: Sequence[str], width: int) -> str:
    """CPU cores per process group, ``?`` where it was not measured."""
    return "".join(Column("", width, ".2f").cell(cores.get(name)) for name in names)


def yes(flag: bool) -> str:
    return "PASS" if flag else "FAIL"


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write ``report`` to ``path`` (bench/results/<bench>.json by default) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"JSON: {path}")
