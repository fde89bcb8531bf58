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

from .archives import ARCHIVE_EXTENSIONS, MEMBER_SEPARATOR, list_members
from .failures import os_error_is_transient
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


def _with_path_rank(walked: pa.Table) -> pa.Table:
    """The walk with `path_rank`: 1, 2, ... in the order of (path, raw_path), as DuckDB sorts
    them (bytes; no raw bytes, NULL, last). A first inventory gives new files their ids in that
    order: Arrow's sort of a million paths takes 0.3 s, the window of the INSERT took 1 s."""
    order = pc.sort_indices(walked, sort_keys=[("path", "ascending"), ("raw_path", "ascending")])
    rank = np.empty(walked.num_rows, dtype=np.int64)
    rank[order.to_numpy()] = np.arange(1, walked.num_rows + 1, dtype=np.int64)
    return walked.append_column("path_rank", pa.array(rank, pa.int64()))


def _int64(values) -> pa.Array:
    return pa.array(np.frombuffer(values, dtype=np.int64) if len(values) else [], pa.int64())


def extension_sql(column: str) -> str:
    """A file's extension from its path or name: lower case with the dot ('.stl' for
    '/a/b/Model.STL'), '' for no extension or a name such as '.hidden'."""
    return f"lower(regexp_extract({column}, '[^/](\\.[^./]*)$', 1))"


# rel_path and extension of each walked file
WALKED_COLUMNS = f"""
    path, raw_path, root::VARCHAR AS root, substr(path, length(root::VARCHAR) + 2) AS rel_path,
    {extension_sql("path")} AS extension, size_bytes, mtime_ns, ctime_ns
"""


# One file, in the catalogue (f) and in the walk (w): the exact path bytes. `path` alone is the
# form shown to people, which two names can share (a raw 0xFF byte, and a backslash + "xff").
SAME_PATH = "f.path = w.path AND f.raw_path IS NOT DISTINCT FROM w.raw_path"
SAME_FILE = f"{SAME_PATH} AND f.archive_id IS NULL"
# Where the catalogue's rows (f) are the outer side (an anti join's left, a correlated NOT
# EXISTS) and already filtered on archive_id IS NULL, they are matched by SAME_PATH: the
# condition on f alone inside the join made DuckDB 1.5 plan a nested loop (4 s at 34k files).
# One member of an archive, in the catalogue (f) and in this listing (w): its archive and its name.
SAME_MEMBER = "f.archive_id = w.archive_id AND f.member = w.member"


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


def _walk_key(roots: Iterable[Path], path_filter: PathFilter | None, follow: bool) -> tuple:
    return (tuple(str(r) for r in roots), path_filter.key if path_filter else (), follow)


def prepare_walk(roots, walk: WalkResult, path_filter=None, follow_symlinks=False) -> None:
    _PREPARED.clear()
    _PREPARED[_walk_key(roots, path_filter, follow_symlinks)] = (time.monotonic(), walk)


def take_prepared_walk(roots, path_filter=None, follow_symlinks=False) -> WalkResult | None:
    """The walk `prepare_walk` left for these roots and settings, if fresh; taken once."""
    made = _PREPARED.pop(_walk_key(roots, path_filter, follow_symlinks), None)
    if made is None or time.monotonic() - made[0] > PREPARED_MAX_AGE_S:
        return None
    return made[1]


def _knows_no_file(catalogue: Catalogue) -> bool:
    with catalogue.connect(write=False) as con:
        one = con.execute("SELECT count(*) FROM (SELECT 1 FROM file_inventory LIMIT 1)")
        return not one.fetchone()[0]


def walk_differs(catalogue: Catalogue, walk: WalkResult) -> bool:
    """Whether a complete walk sees anything the catalogue does not know: a file new,
    changed, gone or back, another set of walk issues, a folder at another mtime, a zip not
    listed in its present state (read only: nothing is written)."""
    tables = _tables(walk)
    with catalogue.connect(write=False) as con:
        con.register("walked", tables["walked"])
        con.register("listed", tables["listed"])
        con.register("issues_now", tables["issues"])
        con.register("unlisted", tables["unlisted"])
        differs = con.execute(
            f"""
            WITH w AS (SELECT {WALKED_COLUMNS} FROM walked)
            SELECT
                (SELECT count(*) FROM w ANTI JOIN file_inventory f
                     ON {SAME_FILE} AND f.present AND f.size_bytes = w.size_bytes
                        AND f.mtime_ns = w.mtime_ns AND f.ctime_ns = w.ctime_ns)
              + (SELECT count(*) FROM present_files f ANTI JOIN w ON {SAME_PATH}
                 -- members follow their archive; under an unlisted folder is not gone
                 WHERE f.archive_id IS NULL AND NOT EXISTS (SELECT 1 FROM unlisted u
                       WHERE f.path = u.prefix OR starts_with(f.path, u.prefix || '/')))
              + (SELECT count(*) FROM (SELECT path, kind FROM issues_now
                                       EXCEPT SELECT path, kind FROM walk_issues))
              -- a broken archive's issue comes from listing it, which only a change redoes
              + (SELECT count(*) FROM (SELECT path, kind FROM walk_issues
                                       WHERE kind <> 'broken_archive'
                                       EXCEPT SELECT path, kind FROM issues_now))
              + (SELECT count(*) FROM (SELECT path, mtime_ns FROM listed
                                       EXCEPT SELECT path, mtime_ns FROM folders))
              + (SELECT count(*) FROM (SELECT path, mtime_ns FROM folders
                                       EXCEPT SELECT path, mtime_ns FROM listed))
              -- zips not listed in the state they are in (catalogued before archives were)
              + (SELECT count(*) FROM present_files z LEFT JOIN archives a USING (file_id)
                 WHERE z.extension IN ({_ARCHIVE_SQL}) AND z.archive_id IS NULL
                   AND (a.file_id IS NULL OR a.size_bytes <> z.size_bytes
                        OR a.mtime_ns <> z.mtime_ns
                        OR a.ctime_ns IS DISTINCT FROM z.ctime_ns))
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


_ARCHIVE_SQL = ", ".join(f"'{e}'" for e in sorted(ARCHIVE_EXTENSIONS))


def _zips_to_list(catalogue: Catalogue, walked: pa.Table) -> pa.Table:
    """The archives (zip, 7z) of this walk whose members must be listed: those not listed yet
    in the state they are in now (new, changed, or catalogued before archives were)."""
    lower = pc.utf8_lower(walked["path"])
    is_archive = None
    for ext in sorted(ARCHIVE_EXTENSIONS):
        hit = pc.ends_with(lower, ext)
        is_archive = hit if is_archive is None else pc.or_(is_archive, hit)
    zips = walked.filter(is_archive)
    if not zips.num_rows or not catalogue.exists():
        return zips
    with catalogue.connect(write=False) as con:
        con.register("zips", zips)
        return con.sql(
            f"""
            SELECT w.* FROM zips w
            LEFT JOIN file_inventory f ON {SAME_FILE}
            LEFT JOIN archives z ON z.file_id = f.file_id
            WHERE z.file_id IS NULL OR z.size_bytes <> w.size_bytes
               OR z.mtime_ns <> w.mtime_ns OR z.ctime_ns IS DISTINCT FROM w.ctime_ns
            """
        ).to_arrow_table()


_MEMBER_COLUMNS = {
    "path": pa.string(), "raw_path": pa.binary(), "root": pa.string(),
    "size_bytes": pa.int64(), "mtime_ns": pa.int64(), "ctime_ns": pa.int64(),
    "member": pa.string(), "archive_path": pa.string(), "archive_raw": pa.binary(),
}  # fmt: skip
_LISTED_COLUMNS = {
    "path": pa.string(), "raw_path": pa.binary(), "size_bytes": pa.int64(),
    "mtime_ns": pa.int64(), "ctime_ns": pa.int64(), "members": pa.int32(),
    "error_class": pa.string(), "error_message": pa.string(),
}  # fmt: skip


def _list_zips(zips: pa.Table, path_filter: PathFilter | None):
    """Every member of these zips, from their central directories (nothing inflated), as rows
    like the walk's plus the archive they are in; the zips listed (with what was found, or
    why their directory cannot be read); and walk issues. A zip that could not be read for a
    reason that may pass (an I/O error on a share) is not among those listed: its members
    stay as they were, and the next walk tries again."""
    path_filter = path_filter or PathFilter()
    keep = lambda name, rel: not path_filter.excluded(name, rel)  # noqa: E731
    cols = {k: [] for k in _MEMBER_COLUMNS}
    listed = {k: [] for k in _LISTED_COLUMNS}
    issues: list[WalkIssue] = []
    for row in zips.to_pylist():
        fs_path = os.fsdecode(row["raw_path"]) if row["raw_path"] is not None else row["path"]
        error = None
        try:
            members = list_members(fs_path, keep)
        except OSError as exc:
            if os_error_is_transient(exc):
                issues.append(WalkIssue(row["path"], "error", type(exc).__name__,
                                        f"its members cannot be listed now: {exc}"))  # fmt: skip
                continue
            members, error = [], exc
        except (zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
            members, error = [], exc
        if error is not None:
            issues.append(WalkIssue(row["path"], "broken_archive", type(error).__name__,
                                    f"its members cannot be listed: {error}"))  # fmt: skip
        for name, value in (("path", row["path"]), ("raw_path", row["raw_path"]),
                            ("size_bytes", row["size_bytes"]), ("mtime_ns", row["mtime_ns"]),
                            ("ctime_ns", row["ctime_ns"]), ("members", len(members)),
                            ("error_class", type(error).__name__ if error else None),
                            ("error_message", str(error) if error else None)):  # fmt: skip
            listed[name].append(value)
        raw = row["raw_path"]
        for m in members:
            cols["path"].append(f"{row['path']}{MEMBER_SEPARATOR}{m.name}")
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
    members_table = pa.table({k: pa.array(v, _MEMBER_COLUMNS[k]) for k, v in cols.items()})
    listed_table = pa.table({k: pa.array(v, _LISTED_COLUMNS[k]) for k, v in listed.items()})
    return members_table, listed_table, issues


def _reconcile_members(con, members: pa.Table, listed: pa.Table, now) -> tuple[int, int, int]:
    """Write the members of the zips listed this time (new, back, changed) and what each
    listing found (`archives`). Returns counts; leaves temp tables `wm` (the members) and
    `relisted_ids` (their archives) for the gone step."""
    con.register("members_now", members)
    con.register("relisted_now", listed)

    con.execute(
        f"""
        CREATE TEMP TABLE wm AS
        SELECT m.path, m.raw_path, m.root,
               a.rel_path || '{MEMBER_SEPARATOR}' || m.member AS rel_path,
               {extension_sql("m.member")} AS extension,
               m.size_bytes, m.mtime_ns, m.ctime_ns, m.member, a.file_id AS archive_id
        FROM members_now m JOIN file_inventory a
          ON a.path = m.archive_path AND a.raw_path IS NOT DISTINCT FROM m.archive_raw
             AND a.archive_id IS NULL
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE relisted_ids AS
        SELECT a.file_id, r.size_bytes, r.mtime_ns, r.ctime_ns, r.members, r.error_class,
               r.error_message
        FROM relisted_now r JOIN file_inventory a
          ON a.path = r.path AND a.raw_path IS NOT DISTINCT FROM r.raw_path
             AND a.archive_id IS NULL
        """
    )
    con.execute(
        """
        INSERT OR REPLACE INTO archives
        SELECT file_id, size_bytes, mtime_ns, ctime_ns, members, error_class, error_message,
               $now FROM relisted_ids
        """,
        {"now": now},
    )
    new = con.execute(
        f"""
        INSERT INTO file_inventory BY NAME
        SELECT (SELECT COALESCE(max(file_id), 0) FROM file_inventory)
                   + row_number() OVER (ORDER BY w.path, w.raw_path) AS file_id,
               w.path, w.raw_path, w.root, w.rel_path, w.extension, w.size_bytes, w.mtime_ns,
               w.ctime_ns, true AS present, $now AS first_seen_at, $now AS changed_at,
               NULL AS gone_at, w.archive_id, w.member
        FROM wm w ANTI JOIN file_inventory f ON {SAME_MEMBER}
        """,
        {"now": now},
    ).fetchone()[0]
    back = con.execute(
        f"""
        UPDATE file_inventory f SET present = true, gone_at = NULL, archive_id = w.archive_id
        FROM wm w WHERE {SAME_MEMBER} AND NOT f.present
        """
    ).fetchone()[0]
    changed = con.execute(
        f"""
        UPDATE file_inventory f
        SET size_bytes = w.size_bytes, mtime_ns = w.mtime_ns, ctime_ns = w.ctime_ns,
            present = true, changed_at = $now, gone_at = NULL, archive_id = w.archive_id
        FROM wm w
        WHERE {SAME_MEMBER} AND (f.size_bytes <> w.size_bytes OR f.mtime_ns <> w.mtime_ns
                               OR f.ctime_ns IS DISTINCT FROM w.ctime_ns)
        """,
        {"now": now},
    ).fetchone()[0]
    return int(new), int(back), int(changed)


def _tables(walk: WalkResult, walked: pa.Table | None = None) -> dict[str, pa.Table]:
    """What a walk saw, as the Arrow tables the SQL of this module reads."""
    return {
        "walked": walked if walked is not None else _walk_table(walk),
        "listed": _folders_table(walk),
        "unlisted": pa.table({"prefix": pa.array(walk.unlisted_dirs, pa.string())}),
        "issues": pa.table(
            {
                "path": pa.array([i.path for i in walk.issues], pa.string()),
                "kind": pa.array([i.kind for i in walk.issues], pa.string()),
                "error_class": pa.array([i.error_class for i in walk.issues], pa.string()),
                "message": pa.array([i.message for i in walk.issues], pa.string()),
            }
        ),
    }


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
    if complete and (not catalogue.exists() or _knows_no_file(catalogue)):
        walked = _with_path_rank(walked)
    # the members of new and changed zips: listed now, with no connection open
    members, listed_zips, archive_issues = _list_zips(_zips_to_list(catalogue, walked), path_filter)
    walk.issues.extend(archive_issues)
    tables = _tables(walk, walked)
    listed, unlisted, issues = tables["listed"], tables["unlisted"], tables["issues"]
    now = _now()
    with catalogue.connect() as con:
        con.register("walked", walked)
        con.register("listed_now", listed)
        con.register("unlisted", unlisted)
        con.register("issues", issues)
        rank = ", path_rank" if "path_rank" in walked.column_names else ""
        con.execute(f"CREATE TEMP TABLE w AS SELECT {WALKED_COLUMNS}{rank} FROM walked")
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
        # A first inventory (the catalogue knows no file): every file is new, none can be back,
        # changed or gone, and the statements that would look for them (each a join of the walk
        # with the catalogue: 1.5 s at a million files) are not run.
        had_files = bool(
            con.execute("SELECT count(*) FROM (SELECT 1 FROM file_inventory LIMIT 1)").fetchone()[0]
        )
        # new files get the next ids in path order; on a first inventory the walk's own
        # ranks in path order (_with_path_rank) save DuckDB the sort
        order = (
            "w.path_rank"
            if rank and not had_files
            else "row_number() OVER (ORDER BY w.path, w.raw_path)"
        )
        new_files = con.execute(
            f"""
            INSERT INTO file_inventory BY NAME
            SELECT (SELECT COALESCE(max(file_id), 0) FROM file_inventory) + {order} AS file_id,
                   w.path, w.raw_path, w.root, w.rel_path,
                   w.extension, w.size_bytes, w.mtime_ns, w.ctime_ns, true AS present,
                   $now AS first_seen_at, $now AS changed_at, NULL AS gone_at
            FROM w ANTI JOIN file_inventory f ON {SAME_FILE}
            """,
            {"now": now},
        ).fetchone()[0]
        returned_files = changed_files = 0
        if had_files:
            _adopt_ctimes(con)
            # a zip back as it was listed (a share mounted again) brings back the members that
            # went with it
            members_back = con.execute(
                """
                UPDATE file_inventory m SET present = true, gone_at = NULL
                FROM file_inventory a, archives z, w
                WHERE m.archive_id = a.file_id AND z.file_id = a.file_id
                  AND NOT m.present AND NOT a.present AND m.gone_at = a.gone_at
                  AND a.path = w.path AND a.raw_path IS NOT DISTINCT FROM w.raw_path
                  AND a.archive_id IS NULL AND w.size_bytes = z.size_bytes
                  AND w.mtime_ns = z.mtime_ns AND w.ctime_ns IS NOT DISTINCT FROM z.ctime_ns
                """
            ).fetchone()[0]
            returned_files = (
                members_back
                + con.execute(
                    f"""
                UPDATE file_inventory f
                SET present = true, gone_at = NULL, root = w.root, rel_path = w.rel_path
                FROM w WHERE {SAME_FILE} AND NOT f.present
                """
                ).fetchone()[0]
            )
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
        member_counts = _reconcile_members(con, members, listed_zips, now)
        new_files += member_counts[0]
        returned_files += member_counts[1]
        changed_files += member_counts[2]
        gone_files = (
            0
            if not had_files
            else con.execute(
                f"""
            UPDATE file_inventory f SET present = false, gone_at = $now
            WHERE f.present AND f.archive_id IS NULL
              AND f.file_id IN (SELECT file_id FROM scope)
              AND NOT EXISTS (SELECT 1 FROM w WHERE {SAME_PATH})
              AND NOT EXISTS (SELECT 1 FROM unlisted u
                              WHERE f.path = u.prefix OR starts_with(f.path, u.prefix || '/'))
            """,
                {"now": now},
            ).fetchone()[0]
        )
        # members follow their archive: gone with it, or gone from its new listing
        gone_files += con.execute(
            f"""
            UPDATE file_inventory f SET present = false, gone_at = $now
            WHERE f.present AND f.archive_id IS NOT NULL AND (
                f.archive_id NOT IN (SELECT file_id FROM file_inventory WHERE present)
                OR (f.archive_id IN (SELECT file_id FROM relisted_ids)
                    AND NOT EXISTS (SELECT 1 FROM wm w WHERE {SAME_MEMBER})))
            """,
            {"now": now},
        ).fetchone()[0]
        if complete:
            con.execute("DELETE FROM walk_issues")
            con.execute("DELETE FROM folders")  # roots no longer configured included
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
