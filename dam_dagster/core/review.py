"""The duplicate review: which copy of each group a person keeps, and the plan that follows.

A choice is a row of `duplicate_reviews` in the catalogue (never an action in the library).
Unreviewed groups keep their default, the original (dedup.ORIGINAL_FIRST: the lowest id,
a file of its own before a zip member), and are left out of every plan. The plan
is dry by design: dam prints it, a person reads it and runs it. It holds commands only for
the current members of reviewed groups (present, with a current full hash equal to the
group's), never for the kept copy, and every command runs only if the copy is still
byte-identical to the kept file (`cmp`). Every path is quoted for the shell (shlex.quote on the
exact bytes of the name) and follows `--`, so a name with a leading dash is not an option.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

import duckdb

from .browse import KEEP_RULES
from .store import Catalogue

PLAN_ACTIONS = ("remove", "hardlink", "quarantine")
PLAN_FORMATS = ("sh", "csv", "json")


class ReviewError(ValueError):
    """A review that cannot be recorded, with the sentence a person needs."""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _rule_sql(rule: str, arg: str | None) -> str:
    if rule not in KEEP_RULES:
        raise ReviewError(f"unknown keep rule {rule!r}; one of {', '.join(KEEP_RULES)}")
    if KEEP_RULES[rule].needs_arg and not arg:
        raise ReviewError(f"the keep rule {rule!r} needs a root")
    return KEEP_RULES[rule].order


_MEMBERS = """
    SELECT d.full_hash, d.size_bytes, f.file_id, f.path, f.root, f.mtime_ns
    FROM duplicates d
    JOIN present_files f USING (file_id)
    JOIN current_full_hashes h ON h.file_id = d.file_id AND h.full_hash = d.full_hash
"""


def apply_rule(
    con: duckdb.DuckDBPyConnection,
    rule: str,
    arg: str | None = None,
    groups: list[tuple[int, str]] | None = None,
    keep_manual: bool = True,
) -> int:
    """Record the copy `rule` keeps for every group (or the given (size, hash) groups).
    Manual choices stay unless keep_manual is False. Returns the groups recorded."""
    order = _rule_sql(rule, arg)
    con.execute("CREATE OR REPLACE TEMP TABLE chosen_groups (size_bytes BIGINT, full_hash VARCHAR)")
    if groups is not None:
        con.executemany("INSERT INTO chosen_groups VALUES (?, ?)", [list(g) for g in groups])
    scope = (
        "true"
        if groups is None
        else "EXISTS (SELECT 1 FROM chosen_groups c "
        "WHERE c.size_bytes = m.size_bytes AND c.full_hash = m.full_hash)"
    )
    manual = (
        "NOT EXISTS (SELECT 1 FROM duplicate_reviews r WHERE r.rule = 'manual' "
        "AND r.size_bytes = m.size_bytes AND r.full_hash = m.full_hash)"
        if keep_manual
        else "true"
    )
    params = {"now": _now(), "rule": rule, "rule_arg": arg}
    if "$arg" in order:
        params["arg"] = arg
    written = con.execute(
        f"""
        INSERT OR REPLACE INTO duplicate_reviews
        SELECT full_hash, size_bytes, first(file_id ORDER BY {order}), $rule, $rule_arg, $now
        FROM ({_MEMBERS}) m
        WHERE {scope} AND {manual}
        GROUP BY full_hash, size_bytes
        HAVING count(*) > 1
        """,
        params,
    ).fetchone()
    return int(written[0]) if written else 0


def keep_file(con: duckdb.DuckDBPyConnection, file_id: int) -> tuple[int, str]:
    """Record `file_id` as the copy kept in its group (rule 'manual'); returns the group."""
    row = con.execute(
        f"SELECT size_bytes, full_hash FROM ({_MEMBERS}) m WHERE file_id = ?", [int(file_id)]
    ).fetchone()
    if row is None:
        raise ReviewError(
            f"file {file_id} is not a current member of a duplicate group (it changed, went "
            "away, or its group was recomputed): reload the page"
        )
    con.execute(
        "INSERT OR REPLACE INTO duplicate_reviews VALUES (?, ?, ?, 'manual', NULL, ?)",
        [row[1], row[0], int(file_id), _now()],
    )
    return int(row[0]), row[1]


def clear_review(con: duckdb.DuckDBPyConnection, size_bytes: int, full_hash: str) -> None:
    con.execute(
        "DELETE FROM duplicate_reviews WHERE size_bytes = ? AND full_hash = ?",
        [int(size_bytes), full_hash],
    )


def review_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Every review row (for mirroring into a replica)."""
    return con.execute("SELECT * FROM duplicate_reviews").fetchall()


# --- the plan -----------------------------------------------------------------------------
@dataclass
class PlanItem:
    full_hash: str
    size_bytes: int
    rule: str
    keep_id: int
    keep_path: str  # for display (\\xNN for undecodable bytes)
    keep_fs: str  # the real path (surrogate escapes), what the shell gets
    file_id: int
    path: str
    fs: str


@dataclass
class Plan:
    action: str
    quarantine_dir: str | None
    items: list[PlanItem]
    stale_groups: int  # reviewed groups whose kept copy is no longer a current member
    made_at: datetime
    catalogue: str

    @property
    def groups(self) -> int:
        return len({(i.size_bytes, i.full_hash) for i in self.items})

    @property
    def reclaimable_bytes(self) -> int:
        return sum(i.size_bytes for i in self.items)


def _fs(path: str, raw: bytes | None) -> str:
    return os.fsdecode(raw) if raw is not None else path


def make_plan(
    con: duckdb.DuckDBPyConnection,
    action: str,
    quarantine_dir: str | None = None,
    catalogue_path: str = "",
) -> Plan:
    if action not in PLAN_ACTIONS:
        raise ReviewError(f"unknown plan {action!r}; one of {', '.join(PLAN_ACTIONS)}")
    if action == "quarantine":
        if not quarantine_dir:
            raise ReviewError("a quarantine plan needs the folder to move the copies into")
        quarantine_dir = os.path.abspath(os.path.expanduser(quarantine_dir))
    rows = con.execute("""
        WITH m AS (
            SELECT d.full_hash, d.size_bytes, f.file_id, f.path, f.raw_path
            FROM duplicates d
            JOIN present_files f USING (file_id)
            JOIN current_full_hashes h ON h.file_id = d.file_id AND h.full_hash = d.full_hash
        )
        SELECT r.full_hash, r.size_bytes, r.rule, r.keep_file_id, k.path, k.raw_path,
               m.file_id, m.path, m.raw_path
        FROM duplicate_reviews r
        JOIN m k ON k.file_id = r.keep_file_id AND k.full_hash = r.full_hash
                 AND k.size_bytes = r.size_bytes
        JOIN m ON m.full_hash = r.full_hash AND m.size_bytes = r.size_bytes
              AND m.file_id <> r.keep_file_id
        ORDER BY r.size_bytes DESC, r.full_hash, m.file_id
    """).fetchall()
    stale = con.execute(f"""
        SELECT count(*) FROM duplicate_reviews r
        WHERE NOT EXISTS (SELECT 1 FROM ({_MEMBERS}) k WHERE k.file_id = r.keep_file_id
                          AND k.full_hash = r.full_hash AND k.size_bytes = r.size_bytes)
    """).fetchone()[0]
    items = [
        PlanItem(
            r[0],
            int(r[1]),
            r[2],
            int(r[3]),
            r[4],
            _fs(r[4], r[5]),
            int(r[6]),
            r[7],
            _fs(r[7], r[8]),
        )
        for r in rows
    ]
    return Plan(action, quarantine_dir, items, int(stale), _now(), catalogue_path)


def plan_from_catalogue(
    catalogue: Catalogue, action: str, quarantine_dir: str | None = None
) -> Plan:
    with catalogue.connect(write=False) as con:
        return make_plan(con, action, quarantine_dir, catalogue.where)


def _q(fs_path: str) -> bytes:
    """A path quoted for sh, as the exact bytes of the name."""
    return shlex.quote(fs_path).encode("utf-8", "surrogateescape")


def _comment(text: str) -> bytes:
    """Text safe inside a shell comment: no newline or control character survives."""
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return safe.encode("utf-8", "backslashreplace")


def _quarantine_target(plan: Plan, item: PlanItem) -> str:
    # The copy keeps its whole absolute path under the quarantine folder: no two collide.
    return os.path.join(plan.quarantine_dir or "", item.fs.lstrip("/"))


def render_sh(plan: Plan) -> bytes:
    verb = {
        "remove": "removes each copy (rm)",
        "hardlink": "replaces each copy by a hard link to the kept file (ln -f); kept file and "
        "copy must be on the same filesystem",
        "quarantine": f"moves each copy into {plan.quarantine_dir}, under its own absolute path",
    }[plan.action]
    out = [
        b"#!/bin/sh",
        b"# dam duplicates plan: " + plan.action.encode(),
        b"# Made "
        + plan.made_at.strftime("%Y-%m-%d %H:%M:%S UTC").encode()
        + b" from "
        + _comment(plan.catalogue),
        b"#",
        b"# THIS IS A DRY PLAN: nothing has been done. dam never changes a library itself.",
        b"# Read it, then run it yourself (sh plan.sh). It " + _comment(verb) + b".",
        b"# It covers only the groups you reviewed, and only their current members; each",
        b"# command runs only if the copy is still byte-identical to the kept file (cmp).",
        f"# {plan.groups} groups, {len(plan.items)} copies, "
        f"{plan.reclaimable_bytes:,} bytes.".encode(),
    ]
    if plan.stale_groups:
        out.append(
            f"# {plan.stale_groups} reviewed group(s) left out: the kept copy changed or went "
            "away since the review; review them again.".encode()
        )
    out += [b"set -u", b""]
    if plan.action == "quarantine":
        out.append(b"mkdir -p -- " + _q(plan.quarantine_dir or ""))
    current = None
    for item in plan.items:
        group = (item.size_bytes, item.full_hash)
        if group != current:
            current = group
            out += [
                b"",
                b"# group "
                + item.full_hash.encode()
                + f" ({item.size_bytes:,} bytes each), kept by rule {item.rule}: ".encode()
                + _comment(item.keep_path),
            ]
        keep, copy = _q(item.keep_fs), _q(item.fs)
        check = b"cmp -s -- " + keep + b" " + copy + b" && "
        if plan.action == "remove":
            out.append(check + b"rm -- " + copy)
        elif plan.action == "hardlink":
            out.append(check + b"ln -f -- " + keep + b" " + copy)
        else:
            target = _quarantine_target(plan, item)
            out.append(
                check
                + b"mkdir -p -- "
                + _q(os.path.dirname(target))
                + b" && mv -- "
                + copy
                + b" "
                + _q(target)
            )
    out.append(b"")
    return b"\n".join(out)


def _rows(plan: Plan) -> list[dict]:
    rows = []
    for item in plan.items:
        row = {
            "action": plan.action,
            "full_hash": item.full_hash,
            "size_bytes": item.size_bytes,
            "rule": item.rule,
            "keep_id": item.keep_id,
            "keep_path": item.keep_path,
            "file_id": item.file_id,
            "path": item.path,
        }
        if plan.action == "quarantine":
            row["target"] = (
                _quarantine_target(plan, item)
                .encode("utf-8", "surrogateescape")
                .decode("utf-8", "backslashreplace")
            )
        rows.append(row)
    return rows


def render_csv(plan: Plan) -> bytes:
    buf = io.StringIO()
    buf.write(
        f"# dam duplicates plan ({plan.action}): a dry plan for a person to read and run; "
        f"{plan.groups} reviewed groups, {len(plan.items)} copies\n"
    )
    fields = [
        "action",
        "full_hash",
        "size_bytes",
        "rule",
        "keep_id",
        "keep_path",
        "file_id",
        "path",
    ]
    if plan.action == "quarantine":
        fields.append("target")
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(_rows(plan))
    return buf.getvalue().encode()


def render_json(plan: Plan) -> bytes:
    doc = {
        "plan": plan.action,
        "note": "A dry plan: nothing has been done. Read it, then act on it yourself.",
        "made_at": plan.made_at.isoformat() + "Z",
        "catalogue": plan.catalogue,
        "quarantine_dir": plan.quarantine_dir,
        "groups": plan.groups,
        "copies": len(plan.items),
        "reclaimable_bytes": plan.reclaimable_bytes,
        "stale_groups": plan.stale_groups,
        "items": _rows(plan),
    }
    return json.dumps(doc, indent=2).encode()


def render_plan(plan: Plan, fmt: str) -> bytes:
    if fmt not in PLAN_FORMATS:
        raise ReviewError(f"unknown plan format {fmt!r}; one of {', '.join(PLAN_FORMATS)}")
    return {"sh": render_sh, "csv": render_csv, "json": render_json}[fmt](plan)
