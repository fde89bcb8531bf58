"""The printers models are checked against: DAM_PRINTERS (its default, in config.py, is a
set of common printers).

A model fits a printer when its bounding box (Z up, as it is drawn) fits the build volume,
turned a quarter on the plate if need be (x and y swapped); no other rotation, no margin.
The catalogue keeps the list in its `printers` table, so the views (`fits_printers`) and
`dam find --fits` say the same thing; every render run and `dam find` write it afresh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ConfigError, env


@dataclass(frozen=True)
class Printer:
    name: str
    x_mm: float
    y_mm: float
    z_mm: float

    def fits(self, x: float, y: float, z: float) -> bool:
        if z > self.z_mm:
            return False
        return (x <= self.x_mm and y <= self.y_mm) or (y <= self.x_mm and x <= self.y_mm)


_ITEM = re.compile(
    r"^\s*(?P<name>[^=]+?)\s*=\s*(?P<x>\d+(?:\.\d+)?)\s*[x×]\s*(?P<y>\d+(?:\.\d+)?)"
    r"\s*[x×]\s*(?P<z>\d+(?:\.\d+)?)\s*(?:mm)?\s*$",
    re.IGNORECASE,
)


def parse_printers(value: str | None = None) -> tuple[Printer, ...]:
    """'Name=250x210x220, Other=180x180x180' (mm); None: DAM_PRINTERS (or its default)."""
    if value is None or not value.strip():
        value = env("DAM_PRINTERS")
    out: list[Printer] = []
    for item in value.split(","):
        if not item.strip():
            continue
        m = _ITEM.match(item)
        if not m:
            raise ConfigError(
                f"DAM_PRINTERS: cannot read {item.strip()!r}; write each printer as "
                "Name=XxYxZ in millimetres, separated by commas, e.g. "
                "'Prusa MK4=250x210x220, Bambu Lab X1=256x256x256'"
            )
        x, y, z = (float(m.group(k)) for k in "xyz")
        if min(x, y, z) <= 0:
            raise ConfigError(f"DAM_PRINTERS: {item.strip()!r} has a zero build dimension")
        if any(p.name == m.group("name") for p in out):
            raise ConfigError(f"DAM_PRINTERS names {m.group('name')!r} twice")
        out.append(Printer(m.group("name"), x, y, z))
    if not out:
        raise ConfigError("DAM_PRINTERS names no printer")
    return tuple(out)


def sync_printers(con, printers: tuple[Printer, ...]) -> None:
    """Make the catalogue's `printers` table the given list (inside the caller's write
    transaction)."""
    con.execute("DELETE FROM printers")
    con.executemany(
        "INSERT INTO printers VALUES (?, ?, ?, ?)",
        [(p.name, p.x_mm, p.y_mm, p.z_mm) for p in printers],
    )
