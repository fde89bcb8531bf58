"""The inventory: walk the roots, then reconcile the catalogue in one transaction.

- A path seen for the first time gets the next `file_id` (new files of one walk in path
  order, after the highest id ever given: rows are never deleted, so ids are never reused).
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
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .archives import MEMBER_SEPARATOR, list_members
from .store import STATE_TABLES, Catalogue
from .walk import (
    PathFilter,
    WalkIssue,
    WalkResult,
    display_path,
    has_undecodable,
    walk_library,
    walk_threads,
)


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
    complete: bool = True  # a complete walk, or only the folders whose mtime changed
    folders_listed: int = 0

    @property
    def issues(self) -> int:
        return sum(self.issues_by_kind.values())


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _walk_table(walk: WalkResult) -> pa.Table:
    """The walk as one Arrow table (no Python object per file); rel_path and extension are
    computed by DuckDB from it (WALKED_COLUMNS)."""
    n = len(walk)
    raw = [None] * n
    for i, data in walk.raw.items():  # rare: most names are valid UTF-8
        raw[i] = data
    roots = pa.array([display_path(r) for r in walk.roots], pa.string())
    root_of = np.frombuffer(walk.root_of, dtype=np.uint16) if n else np.zeros(0, np.uint16)
    return pa.table(
        {
            "path": walk.path_array(),
            "raw_path": pa.array(raw, pa.binary()),
            "root": pa.DictionaryArray.from_arrays(pa.array(root_of, pa.uint16()), roots),
            "size_bytes": _int64(walk.sizes),
            "mtime_ns": _int64(walk.mtimes),
            "ctime_ns": _int64(walk.ctimes),
        }
    )


def _int64(values) -> pa.Array:
    return pa.array(np.frombuffer(values, dtype=np.int64) if len(values) else [], pa.int64())


# rel_path and extension of each walked file: lower case with the dot ('.stl' for
# '/a/b/Model.STL'), '' for no extension or a name such as '.hidden'.
WALKED_COLUMNS = """
    path, raw_path, root::VARCHAR AS root, substr(path, length(root::VARCHAR) + 2) AS rel_path,
    lower(regexp_extract(path, '[^/](\\.[^./]*)$', 1)) AS extension,
    size_bytes, mtime_ns, ctime_ns
"""


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


# A complete walk made moments ago by `dam run` (which looks before it launches a run), for
# the inventory of the same roots in the same process to use once instead of walking again.
_PREPARED: dict[tuple[str, ...], tuple[float, WalkResult]] = {}
PREPARED_MAX_AGE_S = 120.0


def prepare_walk(roots: Iterable[Path], walk: WalkResult) -> None:
    _PREPARED.clear()
    _PREPARED[tuple(str(r) for r in roots)] = (time.monotonic(), walk)


def take_prepared_walk(roots: Iterable[Path]) -> WalkResult | None:
    """The walk `prepare_walk` left for these roots, if fresh; taken once."""
    made = _PREPARED.pop(tuple(str(r) for r in roots), None)
    if made is None or time.monotonic() - made[0] > PREPARED_MAX_AGE_S:
        return None
    return made[1]


def walk_differs(catalogue: Catalogue, walk: WalkResult) -> bool:
    """Whether a complete walk sees anything the catalogue does not know: a file new,
    changed, gone or back, another set of walk issues, a folder at another mtime, a zip
    whose members were never listed (read only: nothing is written)."""
    issues = pa.table(
        {
            "path": pa.array([x.path for x in walk.issues], pa.string()),
            "kind": pa.array([x.kind for x in walk.issues], pa.string()),
        }
    )
    with catalogue.connect(write=False) as con:
        con.register("walked", _walk_table(walk))
        con.register("listed", _folders_table(walk))
        con.register("issues_now", issues)
        con.register("unlisted", pa.table({"prefix": pa.array(walk.unlisted_dirs, pa.string())}))
        differs = con.execute(
            f"""
            WITH w AS (SELECT {WALKED_COLUMNS} FROM walked)
            SELECT
                (SELECT count(*) FROM w ANTI JOIN file_inventory f
                     ON {SAME_FILE} AND f.present AND f.size_bytes = w.size_bytes
                        AND f.mtime_ns = w.mtime_ns AND f.ctime_ns = w.ctime_ns)
              + (SELECT count(*) FROM present_files f ANTI JOIN w ON {SAME_FILE}
                 -- members follow their archive; under an unlisted folder is not gone
                 WHERE f.archive_id IS NULL AND NOT EXISTS (SELECT 1 FROM unlisted u
                       WHERE f.path = u.prefix OR starts_with(f.path, u.prefix || '/')))
              + (SELECT count(*) FROM (SELECT path, kind FROM issues_now
                                       EXCEPT SELECT path, kind FROM walk_issues))
              + (SELECT count(*) FROM (SELECT path, kind FROM walk_issues
                                       EXCEPT SELECT path, kind FROM issues_now))
              + (SELECT count(*) FROM (SELECT path, mtime_ns FROM listed
                                       EXCEPT SELECT path, mtime_ns FROM folders))
              + (SELECT count(*) FROM (SELECT path, mtime_ns FROM folders
                                       EXCEPT SELECT path, mtime_ns FROM listed))
              -- zips whose members were never listed (catalogued before archives were)
              + (SELECT count(*) FROM present_files z
                 WHERE z.extension = '.zip' AND z.archive_id IS NULL
                   AND z.file_id NOT IN (SELECT archive_id FROM file_inventory
                                         WHERE archive_id IS NOT NULL)
                   AND z.path NOT IN (SELECT path FROM walk_issues
                                      WHERE kind = 'broken_archive'))
            """
        ).fetchall()[0][0]
    return bool(differs)


def known_folders(catalogue: Catalogue) -> set[str]:
    """Filesystem paths of the folders the catalogue knows (listed by an earlier walk)."""
    if not catalogue.exists():
        return set()
    with catalogue.connect(write=False) as con:
        rows = con.execute("SELECT path, raw_path FROM folders").fetchall()
    return {os.fsdecode(raw) if raw is not None else path for path, raw in rows}


def _folders_table(walk: WalkResult) -> pa.Table:
    shown = [display_path(f) for f, _, _ in walk.listed]
    return pa.table(
        {
            "path": pa.array(shown, pa.string()),
            "raw_path": pa.array(
                [os.fsencode(f) if has_undecodable(f) else None for f, _, _ in walk.listed],
                pa.binary(),
            ),
            "root": pa.array([display_path(walk.roots[r]) for _, r, _ in walk.listed]),
            "mtime_ns": pa.array([m for _, _, m in walk.listed], pa.int64()),
        }
    )


def _zips_to_list(catalogue: Catalogue, walked: pa.Table) -> pa.Table:
    """The zips of this walk whose members must be listed: new ones, changed ones, and those
    whose members were never listed (catalogued before archives were). Read-only."""
    zips = walked.filter(pc.ends_with(pc.utf8_lower(walked["path"]), ".zip"))
    if not zips.num_rows or not catalogue.exists():
        return zips
    with catalogue.connect(write=False) as con:
        con.register("zips", zips)
        return con.sql(
            f"""
            SELECT w.* FROM zips w
            LEFT JOIN file_inventory f ON {SAME_FILE} AND f.archive_id IS NULL
            WHERE f.file_id IS NULL OR f.size_bytes <> w.size_bytes OR f.mtime_ns <> w.mtime_ns
               OR f.ctime_ns IS DISTINCT FROM w.ctime_ns
               OR NOT EXISTS (SELECT 1 FROM file_inventory m WHERE m.archive_id = f.file_id)
            """
        ).to_arrow_table()


def _list_zips(zips: pa.Table, roots: list[str], path_filter: PathFilter | None):
    """Every member of these zips, from their central directories (nothing inflated), as rows
    like the walk's plus the archive they are in; and the issues of broken archives."""
    path_filter = path_filter or PathFilter()
    keep = lambda name, rel: not path_filter.excluded(name, rel)  # noqa: E731
    cols = {k: [] for k in ("path", "raw_path", "root", "size_bytes", "mtime_ns", "ctime_ns",
                            "member", "archive_path", "archive_raw")}  # fmt: skip
    issues: list[WalkIssue] = []
    for row in zips.to_pylist():
        fs_path = os.fsdecode(row["raw_path"]) if row["raw_path"] is not None else row["path"]
        try:
            members = list_members(fs_path, keep)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
            issues.append(WalkIssue(row["path"], "broken_archive", type(exc).__name__,
                                    f"its members cannot be listed: {exc}"))  # fmt: skip
            continue
        for m in members:
            cols["path"].append(f"{row['path']}{MEMBER_SEPARATOR}{m.name}")
            raw = row["raw_path"]
            cols["raw_path"].append(
                raw + MEMBER_SEPARATOR.encode() + m.name.encode() if raw else None
            )
            cols["root"].append(row["root"])
            cols["size_bytes"].append(m.size)
            cols["mtime_ns"].append(row["mtime_ns"])
            cols["ctime_ns"].append(row["ctime_ns"])
            cols["member"].append(m.name)
            cols["archive_path"].append(row["path"])
            cols["archive_raw"].append(raw)
    table = pa.table({
        "path": pa.array(cols["path"], pa.string()),
        "raw_path": pa.array(cols["raw_path"], pa.binary()),
        "root": pa.array(cols["root"], pa.string()),
        "size_bytes": pa.array(cols["size_bytes"], pa.int64()),
        "mtime_ns": pa.array(cols["mtime_ns"], pa.int64()),
        "ctime_ns": pa.array(cols["ctime_ns"], pa.int64()),
        "member": pa.array(cols["member"], pa.string()),
        "archive_path": pa.array(cols["archive_path"], pa.string()),
        "archive_raw": pa.array(cols["archive_raw"], pa.binary()),
    })  # fmt: skip
    return table, issues


def _reconcile_members(con, members: pa.Table, relisted: pa.Table, now) -> tuple[int, int, int]:
    """Write the members of the zips listed this time (new, back, changed); returns counts.
    Leaves temp tables `wm` (the members) and `relisted_ids` (their archives) for the gone
    step."""
    con.register("members_now", members)
    con.register("relisted_now", relisted.select(["path", "raw_path"]))
    con.execute(
        """
        CREATE TEMP TABLE wm AS
        SELECT m.path, m.raw_path, m.root, a.rel_path || '!/' || m.member AS rel_path,
               lower(regexp_extract(m.member, '[^/](\\.[^./]*)$', 1)) AS extension,
               m.size_bytes, m.mtime_ns, m.ctime_ns, m.member, a.file_id AS archive_id
        FROM members_now m JOIN file_inventory a
          ON a.path = m.archive_path AND a.raw_path IS NOT DISTINCT FROM m.archive_raw
             AND a.archive_id IS NULL
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE relisted_ids AS
        SELECT a.file_id FROM relisted_now r JOIN file_inventory a
          ON a.path = r.path AND a.raw_path IS NOT DISTINCT FROM r.raw_path
             AND a.archive_id IS NULL
        """
    )
    new = con.execute(
        f"""
        INSERT INTO file_inventory BY NAME
        SELECT (SELECT COALESCE(max(file_id), 0) FROM file_inventory)
                   + row_number() OVER (ORDER BY w.path, w.raw_path) AS file_id,
               w.path, w.raw_path, w.root, w.rel_path, w.extension, w.size_bytes, w.mtime_ns,
               w.ctime_ns, true AS present, $now AS first_seen_at, $now AS changed_at,
               NULL AS gone_at, w.archive_id, w.member
        FROM wm w ANTI JOIN file_inventory f ON {SAME_FILE}
        """,
        {"now": now},
    ).fetchone()[0]
    back = con.execute(
        f"""
        UPDATE file_inventory f SET present = true, gone_at = NULL, archive_id = w.archive_id
        FROM wm w WHERE {SAME_FILE} AND NOT f.present
        """
    ).fetchone()[0]
    changed = con.execute(
        f"""
        UPDATE file_inventory f
        SET size_bytes = w.size_bytes, mtime_ns = w.mtime_ns, ctime_ns = w.ctime_ns,
            present = true, changed_at = $now, gone_at = NULL, archive_id = w.archive_id
        FROM wm w
        WHERE {SAME_FILE} AND (f.size_bytes <> w.size_bytes OR f.mtime_ns <> w.mtime_ns
                               OR f.ctime_ns IS DISTINCT FROM w.ctime_ns)
        """,
        {"now": now},
    ).fetchone()[0]
    return int(new), int(back), int(changed)


def _parent(column: str) -> str:
    return f"regexp_replace({column}, '/[^/]*$', '')"


def update_inventory(
    catalogue: Catalogue,
    roots: Iterable[Path],
    path_filter: PathFilter | None = None,
    follow_symlinks: bool = False,
    on_progress: Callable[[WalkResult], None] | None = None,
    io_threads: int = 8,
    only: dict[str, list[str]] | None = None,
    walk: WalkResult | None = None,
) -> InventoryStats:
    """Walk (no connection open), then write the differences in one transaction.

    A complete walk (the default) reconciles every file of the roots. With `only` (root ->
    folders whose mtime changed, core/changes.py) just those folders are listed, new
    subfolders walked whole, and only what lies under them is reconciled: a file added,
    removed or renamed there is seen; a file rewritten in place (its folder's mtime does not
    move) waits for the next complete walk. `walk` is a complete walk made moments ago by
    the caller (`dam run` looks before it launches anything), used instead of walking again.
    """
    roots = list(roots)
    started = _now()
    t0 = datetime.now()
    if walk is None:
        known = None
        if only is not None:
            folders = known_folders(catalogue)
            known = folders.__contains__
        walk = walk_library(
            roots,
            path_filter,
            follow_symlinks,
            on_progress,
            threads=walk_threads(roots, io_threads),
            only=only,
            known=known,
        )
    walk_seconds = (datetime.now() - t0).total_seconds()
    complete = only is None

    walked = _walk_table(walk)
    # the members of new and changed zips: listed now, with no connection open
    relisted = _zips_to_list(catalogue, walked)
    members, archive_issues = _list_zips(relisted, walk.roots, path_filter)
    walk.issues.extend(archive_issues)
    listed = _folders_table(walk)
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
        con.register("listed_now", listed)
        con.register("unlisted", unlisted)
        con.register("issues", issues)
        con.execute(f"CREATE TEMP TABLE w AS SELECT {WALKED_COLUMNS} FROM walked")
        con.execute("CREATE TEMP TABLE listed AS SELECT * FROM listed_now")
        # What this walk speaks for: every file of the roots, or the files directly in the
        # folders it listed and everything under the subfolders they no longer hold.
        if complete:
            con.execute("CREATE TEMP TABLE scope AS SELECT file_id FROM present_files")
        else:
            con.register("held", pa.table({"path": [display_path(f) for f in walk.subfolders]}))
            con.execute(
                f"""
                CREATE TEMP TABLE removed AS
                SELECT k.path FROM folders k
                WHERE {_parent("k.path")} IN (SELECT path FROM listed)
                  AND k.path NOT IN (SELECT path FROM listed)
                  AND k.path NOT IN (SELECT path FROM held)
                """
            )
            con.execute(
                f"""
                CREATE TEMP TABLE scope AS
                SELECT file_id FROM present_files f
                WHERE {_parent("f.path")} IN (SELECT path FROM listed)
                   OR EXISTS (SELECT 1 FROM removed r WHERE starts_with(f.path, r.path || '/'))
                """
            )
        new_files = con.execute(
            f"""
            INSERT INTO file_inventory BY NAME
            SELECT (SELECT COALESCE(max(file_id), 0) FROM file_inventory)
                       + row_number() OVER (ORDER BY w.path, w.raw_path) AS file_id,
                   w.path, w.raw_path, w.root, w.rel_path,
                   w.extension, w.size_bytes, w.mtime_ns, w.ctime_ns, true AS present,
                   $now AS first_seen_at, $now AS changed_at, NULL AS gone_at
            FROM w ANTI JOIN file_inventory f ON {SAME_FILE}
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
        member_counts = _reconcile_members(con, members, relisted, now)
        new_files += member_counts[0]
        returned_files += member_counts[1]
        changed_files += member_counts[2]
        gone_files = con.execute(
            f"""
            UPDATE file_inventory f SET present = false, gone_at = $now
            WHERE f.present AND f.archive_id IS NULL
              AND f.file_id IN (SELECT file_id FROM scope)
              AND NOT EXISTS (SELECT 1 FROM w WHERE {SAME_FILE})
              AND NOT EXISTS (SELECT 1 FROM unlisted u
                              WHERE f.path = u.prefix OR starts_with(f.path, u.prefix || '/'))
            """,
            {"now": now},
        ).fetchone()[0]
        # members follow their archive: gone with it, or gone from its new listing
        gone_files += con.execute(
            """
            UPDATE file_inventory f SET present = false, gone_at = $now
            WHERE f.present AND f.archive_id IS NOT NULL AND (
                f.archive_id NOT IN (SELECT file_id FROM file_inventory WHERE present)
                OR (f.archive_id IN (SELECT file_id FROM relisted_ids)
                    AND NOT EXISTS (SELECT 1 FROM wm w WHERE w.path = f.path
                                    AND w.raw_path IS NOT DISTINCT FROM f.raw_path)))
            """,
            {"now": now},
        ).fetchone()[0]
        if complete:
            con.execute("DELETE FROM walk_issues")
            roots_shown = [display_path(str(r)) for r in roots]
            con.execute("DELETE FROM folders WHERE list_contains($roots, root)",
                        {"roots": roots_shown})  # fmt: skip
        else:
            con.execute(
                f"""DELETE FROM walk_issues WHERE path IN (SELECT path FROM listed)
                    OR {_parent("path")} IN (SELECT path FROM listed)"""
            )
            con.execute(
                """DELETE FROM folders WHERE path IN (SELECT path FROM listed)
                   OR EXISTS (SELECT 1 FROM removed r WHERE folders.path = r.path
                              OR starts_with(folders.path, r.path || '/'))"""
            )
        con.execute(
            "INSERT INTO walk_issues SELECT path, kind, error_class, message, $now FROM issues",
            {"now": now},
        )
        con.execute(
            "INSERT INTO folders SELECT path, raw_path, root, mtime_ns, $now FROM listed",
            {"now": now},
        )
        # A root that suddenly holds nothing while the catalogue knew files there is most
        # often an unmounted share: say so loudly (nothing is lost, ids and hashes are kept).
        warnings = []
        for root in roots if complete else []:
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
            files_seen=len(walk),
            bytes_seen=walk.bytes_seen,
            new_files=int(new_files),
            changed_files=int(changed_files),
            returned_files=int(returned_files),
            gone_files=int(gone_files),
            excluded=walk.excluded,
            issues_by_kind=dict(Counter(i.kind for i in walk.issues)),
            warnings=warnings,
            walk_seconds=walk_seconds,
            complete=complete,
            folders_listed=len(walk.listed),
        )
        con.execute(
            """INSERT INTO inventory_scans BY NAME SELECT ? AS started_at, ? AS finished_at,
                   ? AS roots, ? AS files_seen, ? AS bytes_seen, ? AS new_files,
                   ? AS changed_files, ? AS gone_files, ? AS issues, ? AS complete""",
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
                complete,
            ],
        )
    return stats
