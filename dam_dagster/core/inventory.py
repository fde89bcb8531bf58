"""The inventory: walk the roots, then reconcile the catalogue in one transaction.

- A path seen for the first time gets the next `file_id`; ids are never reused.
- An unchanged file (same size and mtime) is not touched.
- A changed file gets its new size and mtime; hashes stored for the old state stop being
  current at once (they are keyed by the state they were computed from), so they are redone.
- A file no longer found is marked `present = false` and keeps its row and id; if it comes
  back with the same size and mtime, its hashes are current again without a read.
- What is under a folder that could not be listed is left as it was: a permission problem is
  not a deletion.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from .store import STATE_TABLES, Catalogue
from .walk import PathFilter, WalkResult, display_path, has_undecodable, walk_library, walk_threads


@dataclass
class InventoryStats:
    roots: list[str]
    files_seen: int
    bytes_seen: int
    new_files: int
    changed_files: int
    returned_files: int
    gone_files: int
    excluded: int
    issues_by_kind: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    walk_seconds: float = 0.0

    @property
    def issues(self) -> int:
        return sum(self.issues_by_kind.values())


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _walk_table(walk: WalkResult) -> pa.Table:
    files = walk.files
    bad = [has_undecodable(f.path) for f in files]  # rare: most names are valid UTF-8
    paths = [display_path(f.path) if b else f.path for f, b in zip(files, bad)]
    roots = {f.root: display_path(f.root) for f in files}
    return pa.table(
        {
            "path": pa.array(paths, pa.string()),
            "raw_path": pa.array(
                [os.fsencode(f.path) if b else None for f, b in zip(files, bad)], pa.binary()
            ),
            "root": pa.array([roots[f.root] for f in files], pa.string()),
            "rel_path": pa.array(
                [display_path(f.rel_path) if b else f.rel_path for f, b in zip(files, bad)],
                pa.string(),
            ),
            "extension": pa.array([_extension(p) for p in paths], pa.string()),
            "size_bytes": pa.array([f.size_bytes for f in files], pa.int64()),
            "mtime_ns": pa.array([f.mtime_ns for f in files], pa.int64()),
            "ctime_ns": pa.array([f.ctime_ns for f in files], pa.int64()),
        }
    )


# One file, in the catalogue (f) and in the walk (w): the exact path bytes. `path` alone is the
# form shown to people, which two names can share (a raw 0xFF byte, and a backslash + "xff").
SAME_FILE = "f.path = w.path AND f.raw_path IS NOT DISTINCT FROM w.raw_path"


def _adopt_ctimes(con) -> None:
    """Rows from before ctime was part of a file's state (schema v3) have it NULL. The first
    walk after the upgrade records what it sees, for the inventory and for every row made from
    the same (size, mtime), so an upgrade re-reads nothing."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE adopt AS
        SELECT f.file_id, w.size_bytes, w.mtime_ns, w.ctime_ns
        FROM file_inventory f JOIN w ON {SAME_FILE}
        WHERE f.ctime_ns IS NULL AND f.size_bytes = w.size_bytes AND f.mtime_ns = w.mtime_ns
        """
    )
    if not con.execute("SELECT count(*) FROM adopt").fetchone()[0]:
        return
    for table in STATE_TABLES:
        con.execute(
            f"""
            UPDATE {table} t SET ctime_ns = a.ctime_ns FROM adopt a
            WHERE t.file_id = a.file_id AND t.ctime_ns IS NULL
              AND t.size_bytes = a.size_bytes AND t.mtime_ns = a.mtime_ns
            """
        )
    con.execute(
        "UPDATE file_inventory f SET ctime_ns = a.ctime_ns FROM adopt a WHERE f.file_id = a.file_id"
    )


def _extension(path: str) -> str:
    """'.stl' for '/a/b/Model.STL'; '' when the name has no extension (or is '.hidden')."""
    dot = path.rfind(".")
    slash = path.rfind("/")
    return path[dot:].lower() if dot > slash + 1 else ""


def update_inventory(
    catalogue: Catalogue,
    roots: Iterable[Path],
    path_filter: PathFilter | None = None,
    follow_symlinks: bool = False,
    on_progress: Callable[[WalkResult], None] | None = None,
    io_threads: int = 8,
) -> InventoryStats:
    """Walk (no connection open), then write the differences in one transaction."""
    roots = list(roots)
    started = _now()
    t0 = datetime.now()
    walk = walk_library(
        roots, path_filter, follow_symlinks, on_progress, threads=walk_threads(roots, io_threads)
    )
    walk_seconds = (datetime.now() - t0).total_seconds()

    walked = _walk_table(walk)
    unlisted = pa.table({"prefix": pa.array(walk.unlisted_dirs, pa.string())})
    issues = pa.table(
        {
            "path": pa.array([i.path for i in walk.issues], pa.string()),
            "kind": pa.array([i.kind for i in walk.issues], pa.string()),
            "error_class": pa.array([i.error_class for i in walk.issues], pa.string()),
            "message": pa.array([i.message for i in walk.issues], pa.string()),
        }
    )
    now = _now()
    with catalogue.connect() as con:
        con.register("walked", walked)
        con.register("unlisted", unlisted)
        con.register("issues", issues)
        con.execute("CREATE TEMP TABLE w AS SELECT * FROM walked")
        new_files = con.execute(
            f"""
            INSERT INTO file_inventory BY NAME
            SELECT nextval('file_id_seq') AS file_id, w.path, w.raw_path, w.root, w.rel_path,
                   w.extension, w.size_bytes, w.mtime_ns, w.ctime_ns, true AS present,
                   $now AS first_seen_at, $now AS changed_at, NULL AS gone_at
            FROM w ANTI JOIN file_inventory f ON {SAME_FILE}
            ORDER BY w.path, w.raw_path
            """,
            {"now": now},
        ).fetchone()[0]
        _adopt_ctimes(con)
        returned_files = con.execute(
            f"""
            UPDATE file_inventory f
            SET present = true, gone_at = NULL, root = w.root, rel_path = w.rel_path
            FROM w WHERE {SAME_FILE} AND NOT f.present
            """
        ).fetchone()[0]
        changed_files = con.execute(
            f"""
            UPDATE file_inventory f
            SET size_bytes = w.size_bytes, mtime_ns = w.mtime_ns, ctime_ns = w.ctime_ns,
                present = true, changed_at = $now, gone_at = NULL, root = w.root,
                rel_path = w.rel_path
            FROM w
            WHERE {SAME_FILE} AND (f.size_bytes <> w.size_bytes OR f.mtime_ns <> w.mtime_ns
                                   OR f.ctime_ns <> w.ctime_ns)
            """,
            {"now": now},
        ).fetchone()[0]
        gone_files = con.execute(
            f"""
            UPDATE file_inventory f SET present = false, gone_at = $now
            WHERE f.present
              AND NOT EXISTS (SELECT 1 FROM w WHERE {SAME_FILE})
              AND NOT EXISTS (SELECT 1 FROM unlisted u
                              WHERE f.path = u.prefix OR starts_with(f.path, u.prefix || '/'))
            """,
            {"now": now},
        ).fetchone()[0]
        con.execute("DELETE FROM walk_issues")
        con.execute(
            "INSERT INTO walk_issues SELECT path, kind, error_class, message, $now FROM issues",
            {"now": now},
        )
        # A root that suddenly holds nothing while the catalogue knew files there is most
        # often an unmounted share: say so loudly (nothing is lost, ids and hashes are kept).
        warnings = []
        for root in roots:
            root_s = display_path(str(root))
            seen = con.execute("SELECT count(*) FROM w WHERE root = ?", [root_s]).fetchone()[0]
            if seen == 0:
                had = con.execute(
                    "SELECT count(*) FROM file_inventory WHERE root = $root AND gone_at = $now",
                    {"root": root_s, "now": now},
                ).fetchone()[0]
                if had:
                    warnings.append(
                        f"root {root_s} is empty now but held {had} files at the last scan: "
                        "is the share mounted? They are marked not present and come back, "
                        "with their ids and hashes, on the next scan that finds them."
                    )
        stats = InventoryStats(
            roots=[display_path(str(r)) for r in roots],
            files_seen=len(walk.files),
            bytes_seen=walk.bytes_seen,
            new_files=int(new_files),
            changed_files=int(changed_files),
            returned_files=int(returned_files),
            gone_files=int(gone_files),
            excluded=walk.excluded,
            issues_by_kind=dict(Counter(i.kind for i in walk.issues)),
            warnings=warnings,
            walk_seconds=walk_seconds,
        )
        con.execute(
            "INSERT INTO inventory_scans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                started,
                _now(),
                ":".join(stats.roots),
                stats.files_seen,
                stats.bytes_seen,
                stats.new_files,
                stats.changed_files,
                stats.gone_files,
                stats.issues,
            ],
        )
    return stats
