"""What the library browser shows, as queries: the browse tables built into a replica of the
catalogue, and the pages' reads over them (keyset paging, filters, search, folders, groups).

The web layer (dam_dagster/web) only renders what these functions return, and the `dam`
command and the Dagster metadata compute their figures with the same SQL (core/status.py), so
a figure reads the same everywhere.

The replica is a copy of the catalogue file (core/replica.py makes it) to which
`build_browse_tables` adds flat tables made for reading:

    b_files    one row per present file: names, folder, hashes, duplicate and thumbnail state,
               size bucket, lower-case name and path for search, the model's geometry and
               print facts (current_model_facts, fits_printers as the `models` view has it)
               and its "same model, different file" group (similar_models)
    b_members  the rows of b_files that belong to a duplicate group
    b_similar  the rows of b_files that belong to a similar_models group
    b_printers the printers of DAM_PRINTERS (as the last render run saw them), with how many
               measured models fit each
    b_folders  every folder of every root with its counts (files, models, bytes, recursive)
    b_groups   one row per duplicate group, sorted by reclaimable bytes
    b_meta     when the replica was made and from which catalogue state

New columns of `models` (geometry facts, say) become filters by adding a column to b_files
and an entry to FILTERS.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from .render.api import IMAGE_EXTENSIONS
from .store import FITS_PRINTERS_SQL, MODEL_EXTENSIONS
from .thumbnails import SizeBucket
from .vocabulary import FAILED_STATUSES

PAGE_SIZE = 60
MAX_PAGE_SIZE = 500


def _sql_list(values) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def build_browse_tables(con: duckdb.DuckDBPyConnection, buckets: Sequence[SizeBucket]) -> None:
    """Add the browse tables to a replica (one transaction). Reads only catalogue views."""
    bucket_case = " ".join(
        f"WHEN f.size_bytes >= {b.low}"
        + (f" AND f.size_bytes < {b.high}" if b.high is not None else "")
        + f" THEN '{b.key}'"
        for b in buckets
    )
    con.execute("BEGIN TRANSACTION")
    con.execute(f"""
        CREATE OR REPLACE TABLE b_files AS
        SELECT
            f.file_id AS id, f.path, f.raw_path IS NOT NULL AS raw_name, f.root, f.rel_path,
            regexp_extract(f.path, '[^/]*$') AS name,
            regexp_replace(f.rel_path, '/?[^/]*$', '') AS folder,
            lower(regexp_extract(f.path, '[^/]*$')) AS name_lc,
            lower(f.path) AS path_lc,
            f.extension, f.size_bytes, f.mtime_ns, f.first_seen_at, f.changed_at,
            f.extension IN ({_sql_list(MODEL_EXTENSIONS)}) AS is_model,
            f.extension IN ({_sql_list(sorted(IMAGE_EXTENSIONS))}) AS is_image,
            ph.prefix_hash, ph.partial_hash,
            COALESCE(fh.full_hash, ph.full_hash) AS full_hash,
            COALESCE(fh.error_class, ph.error_class) AS hash_error_class,
            COALESCE(fh.error_message, ph.error_message) AS hash_error_message,
            d.original_id, d.duplicate_of_id, d.group_size,
            d.duplicate_of_id IS NOT NULL AS is_duplicate,
            d.file_id IS NOT NULL AND d.duplicate_of_id IS NULL AS has_copies,
            t.status AS thumbnail_status, t.source AS thumbnail_source, t.content_md5,
            t.thumbnail_relpath,
            CASE WHEN t.status = 'ok'
                 THEN regexp_extract(t.thumbnail_relpath, '([0-9a-f]{{32}})[.]png$', 1) END
                AS thumb_key,
            t.error_class, t.error_message, t.transient,
            t.render_seconds, t.rendered_at, t.lane,
            CASE {bucket_case} END AS bucket,
            m.triangles, m.points, m.bodies, m.size_x_mm, m.size_y_mm, m.size_z_mm,
            greatest(m.size_x_mm, m.size_y_mm, m.size_z_mm) AS max_size_mm,
            m.area_mm2, m.volume_mm3, m.watertight, m.winding_consistent, m.unit,
            m.probably_inches, m.up_axis, m.fingerprint,
            m.error_class AS facts_error_class, m.error_message AS facts_error_message,
            {FITS_PRINTERS_SQL} AS fits_printers,
            m.slicer, m.printer, m.nozzle_mm, m.filament_types, m.filament_colours,
            m.object_names, m.print_time_s, m.filament_g,
            s.group_id AS similar_group_id, s.group_size AS similar_group_size,
            COALESCE(s.exact_duplicate_of_id, s.file_id) AS similar_bytes_id
        FROM file_inventory f
        LEFT JOIN current_partial_hashes ph USING (file_id)
        LEFT JOIN current_full_hashes fh USING (file_id)
        LEFT JOIN duplicates d USING (file_id)
        LEFT JOIN current_thumbnails t USING (file_id)
        LEFT JOIN current_model_facts m USING (file_id)
        LEFT JOIN similar_models s USING (file_id)
        WHERE f.present
    """)
    # The members of duplicate groups (a few % of the files), for the group pages.
    con.execute("""
        CREATE OR REPLACE TABLE b_members AS
        SELECT * FROM b_files WHERE original_id IS NOT NULL ORDER BY size_bytes, full_hash, id
    """)
    # The members of similar_models groups (a few % too), for the model page.
    con.execute("""
        CREATE OR REPLACE TABLE b_similar AS
        SELECT * FROM b_files WHERE similar_group_id IS NOT NULL ORDER BY similar_group_id, id
    """)
    con.execute("""
        CREATE OR REPLACE TABLE b_printers AS
        SELECT p.name, p.x_mm, p.y_mm, p.z_mm, count(u.name) AS models
        FROM printers p
        LEFT JOIN (SELECT unnest(fits_printers) AS name FROM b_files WHERE is_model) u
            USING (name)
        GROUP BY ALL ORDER BY p.name
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE b_dirs AS
        SELECT root, folder, count(*) AS files, count(*) FILTER (WHERE is_model) AS models,
               sum(size_bytes) AS bytes
        FROM b_files GROUP BY root, folder
    """)
    con.execute("""
        CREATE OR REPLACE TABLE b_folders AS
        WITH expanded AS (
            SELECT root, '' AS folder, files, models, bytes FROM b_dirs
            UNION ALL
            SELECT root, array_to_string(string_split(folder, '/')[1:i], '/'), files, models,
                   bytes
            FROM b_dirs, unnest(range(1, len(string_split(folder, '/')) + 1)) AS r(i)
            WHERE folder <> ''
        )
        SELECT e.root, e.folder,
               regexp_replace(e.folder, '/?[^/]*$', '') AS parent,
               regexp_extract(e.folder, '[^/]*$') AS name,
               CASE WHEN e.folder = '' THEN 0 ELSE len(string_split(e.folder, '/')) END AS depth,
               sum(e.files) AS files, sum(e.models) AS models, sum(e.bytes) AS bytes,
               any_value(d.files) AS files_here
        FROM expanded e LEFT JOIN b_dirs d USING (root, folder)
        GROUP BY e.root, e.folder
        ORDER BY e.root, e.folder
    """)
    con.execute("""
        CREATE OR REPLACE TABLE b_groups AS
        SELECT d.size_bytes, d.full_hash, min(d.original_id) AS original_id, count(*) AS files,
               d.size_bytes * (count(*) - 1) AS reclaimable_bytes
        FROM duplicates d JOIN file_inventory f USING (file_id)
        WHERE f.present
        GROUP BY d.size_bytes, d.full_hash
        ORDER BY reclaimable_bytes DESC, d.full_hash
    """)
    con.execute("DROP TABLE b_dirs")
    con.execute("COMMIT")


# The columns a listing filters, searches and sorts on, kept in memory by the server
# (load_index): a scan of an in-memory column is about twice as fast as of the compressed
# columns of the file. Cards are then fetched from b_files by id, 61 rows at a time.
INDEX_COLUMNS = (
    "id, name_lc, path_lc, root, folder, extension, size_bytes, mtime_ns, is_model, is_image, "
    "bucket, thumbnail_status, is_duplicate, has_copies, original_id, "
    "triangles, size_x_mm, size_y_mm, size_z_mm, max_size_mm, volume_mm3, watertight, "
    "probably_inches, similar_group_id"
)


def load_index(con: duckdb.DuckDBPyConnection) -> None:
    """Put the listing's columns of b_files in an in-memory database (`mem.b_index`), shared
    by every cursor of this connection. Optional: the reads fall back to b_files without it."""
    attached = con.execute(
        "SELECT count(*) FROM duckdb_databases() WHERE database_name = 'mem'"
    ).fetchone()[0]
    if not attached:
        con.execute("ATTACH ':memory:' AS mem")
    con.execute(f"CREATE OR REPLACE TABLE mem.b_index AS SELECT {INDEX_COLUMNS} FROM b_files")


def _index(con: duckdb.DuckDBPyConnection) -> str:
    has = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'mem' "
        "AND table_name = 'b_index'"
    ).fetchone()[0]
    return "mem.b_index" if has else "b_files"


# --- cursors ------------------------------------------------------------------------------
def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, arity: int, nullable: bool = False) -> list[Any] | None:
    """The values of a cursor, or None for a missing or malformed one (first page). With
    `nullable`, the first value may be null (the last row had no value for the sort)."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(values, list) or len(values) != arity:
        return None
    first = values[1:] if nullable and values and values[0] is None else values
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in first):
        return None
    return values


# --- the library --------------------------------------------------------------------------
@dataclass(frozen=True)
class Sort:
    key: str
    label: str
    column: str  # b_index column; ties broken by id
    nullable: bool = False  # NULL (a model not measured) sorts last, either way


SORTS: dict[str, Sort] = {
    s.key: s
    for s in (
        Sort("name", "name", "name_lc"),
        Sort("size", "size", "size_bytes"),
        Sort("changed", "date changed", "mtime_ns"),
        # the geometry facts (docs/MODELS.md); files without them come after the rest
        Sort("triangles", "triangles", "triangles", nullable=True),
        Sort("volume", "volume (mm³)", "volume_mm3", nullable=True),
        Sort("largest", "largest side (mm)", "max_size_mm", nullable=True),
    )
}

KINDS = {"models": "is_model", "images": "is_image", "all": "true"}
THUMBNAIL_STATES = {
    "ok": "thumbnail_status = 'ok'",
    "failed": f"thumbnail_status IN ({_sql_list(FAILED_STATUSES)})",
    "unsupported": "thumbnail_status = 'unsupported'",
    "none": "thumbnail_status IS NULL",
}
DUPLICATE_STATES = {
    "duplicate": "is_duplicate",
    "has_copies": "has_copies",
    "unique": "original_id IS NULL",
}
# The geometry facts, as `dam find` has them (same names, same units: mm): a model that was
# not measured matches none of these.
WATERTIGHT_STATES = {"yes": "watertight", "no": "NOT watertight"}
INCHES_STATES = {"yes": "probably_inches", "no": "NOT probably_inches"}
SIMILAR_STATES = {"yes": "similar_group_id IS NOT NULL", "no": "similar_group_id IS NULL"}
# A model fits a printer as core/printers.py says (its bounding box, turned a quarter on the
# plate if need be), the printer's build volume read from the catalogue's `printers` table.
_PRINTER = "(SELECT {} FROM b_printers WHERE name = ?)"
FITS_SQL = (
    f"size_z_mm <= {_PRINTER.format('z_mm')} AND ("
    f"(size_x_mm <= {_PRINTER.format('x_mm')} AND size_y_mm <= {_PRINTER.format('y_mm')}) OR "
    f"(size_y_mm <= {_PRINTER.format('x_mm')} AND size_x_mm <= {_PRINTER.format('y_mm')}))"
)


@dataclass(frozen=True)
class Filter:
    """A query parameter and the SQL it adds; `values` None means free text (`valid`, when
    given, says which texts are accepted: others are ignored)."""

    param: str
    label: str
    sql: Callable[[str], tuple[str, list[Any]]]
    values: dict[str, str] | None = None
    valid: Callable[[str], bool] | None = None


def _choice(table: dict[str, str]) -> Callable[[str], tuple[str, list[Any]]]:
    return lambda v: (table[v], [])


def _number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return value == value and abs(value) != float("inf")


def _at_most(column: str, cast=float) -> Callable[[str], tuple[str, list[Any]]]:
    return lambda v: (f"{column} <= ?", [cast(float(v))])


FILTERS: tuple[Filter, ...] = (
    Filter("kind", "kind", _choice(KINDS), KINDS),
    Filter("root", "root", lambda v: ("root = ?", [v])),
    Filter("folder", "folder", lambda v: ("(folder = ? OR starts_with(folder, ? || '/'))", [v, v])),
    Filter("format", "format", lambda v: ("extension = ?", ["." + v.lower().lstrip(".")])),
    Filter("bucket", "size bucket", lambda v: ("bucket = ?", [v])),
    Filter("thumbnail", "thumbnail", _choice(THUMBNAIL_STATES), THUMBNAIL_STATES),
    Filter("duplicate", "duplicate state", _choice(DUPLICATE_STATES), DUPLICATE_STATES),
    Filter("max_x", "largest size along X (mm)", _at_most("size_x_mm"), valid=_number),
    Filter("max_y", "largest size along Y (mm)", _at_most("size_y_mm"), valid=_number),
    Filter("max_z", "largest size along Z (mm)", _at_most("size_z_mm"), valid=_number),
    Filter("max_triangles", "most triangles", _at_most("triangles", int), valid=_number),
    Filter("watertight", "watertight", _choice(WATERTIGHT_STATES), WATERTIGHT_STATES),
    Filter("probably_inches", "probably inches", _choice(INCHES_STATES), INCHES_STATES),
    Filter("fits", "fits printer", lambda v: (FITS_SQL, [v] * 5)),
    Filter("similar", "same model elsewhere", _choice(SIMILAR_STATES), SIMILAR_STATES),
)
FILTERS_BY_PARAM = {f.param: f for f in FILTERS}


@dataclass
class LibraryQuery:
    q: str = ""
    filters: dict[str, str] = field(default_factory=dict)
    sort: str = "name"
    desc: bool = False
    cursor: str | None = None
    limit: int = PAGE_SIZE

    @classmethod
    def from_params(cls, params: dict[str, str]) -> LibraryQuery:
        """From query parameters, ignoring unknown or invalid values (never an error page)."""
        filters = {}
        for f in FILTERS:
            value = (params.get(f.param) or "").strip()
            if not value or (f.values is not None and value not in f.values):
                continue
            if f.valid is None or f.valid(value):
                filters[f.param] = value
        filters.setdefault("kind", "models")
        sort = params.get("sort", "name")
        try:
            limit = max(1, min(MAX_PAGE_SIZE, int(params.get("limit", PAGE_SIZE))))
        except ValueError:
            limit = PAGE_SIZE
        return cls(
            q=(params.get("q") or "").strip()[:500],
            filters=filters,
            sort=sort if sort in SORTS else "name",
            desc=params.get("order") == "desc",
            cursor=params.get("cursor") or None,
            limit=limit,
        )

    def params(self, **changes: Any) -> dict[str, str]:
        """The query parameters of this query (for links), with changes; None drops one."""
        out: dict[str, str] = {}
        if self.q:
            out["q"] = self.q
        out.update({k: v for k, v in self.filters.items() if not (k == "kind" and v == "models")})
        if self.sort != "name":
            out["sort"] = self.sort
        if self.desc:
            out["order"] = "desc"
        for k, v in changes.items():
            if v is None or v == "":
                out.pop(k, None)
            else:
                out[k] = str(v)
        return out

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for param, value in self.filters.items():
            sql, a = FILTERS_BY_PARAM[param].sql(value)
            clauses.append(sql)
            args += a
        if self.q:
            # Every word must appear in the path (name or folders), case-insensitively.
            for word in self.q.lower().split()[:8]:
                clauses.append("contains(path_lc, ?)")
                args.append(word)
        return (" AND ".join(clauses) or "true"), args


CARD_COLUMNS = (
    "id, name, path, root, folder, extension, size_bytes, mtime_ns, is_model, is_duplicate, "
    "has_copies, duplicate_of_id, group_size, thumbnail_status, thumbnail_source, thumb_key, "
    "error_class, bucket, triangles, size_x_mm, size_y_mm, size_z_mm, volume_mm3, watertight, "
    "probably_inches, similar_group_id, similar_group_size"
)


@dataclass
class Page:
    rows: list[dict]
    next_cursor: str | None
    total: int | None = None


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def library_page(con: duckdb.DuckDBPyConnection, query: LibraryQuery, count: bool = True) -> Page:
    """One page of cards, keyset-paged on (sort column, id): as fast on page 1,000 as on 1."""
    sort = SORTS[query.sort]
    where, args = query.where()
    op, direction = ("<", "DESC") if query.desc else (">", "ASC")
    after = decode_cursor(query.cursor, 2, nullable=sort.nullable)
    keyset = "true"
    kargs: list[Any] = []
    if after is not None and after[0] is None:  # among the rows without a value (last)
        keyset = f"({sort.column} IS NULL AND id {op} ?)"
        kargs = after[1:]
    elif after is not None:
        keyset = f"({sort.column}, id) {op} (?, ?)"
        if sort.nullable:
            keyset = f"({keyset} OR {sort.column} IS NULL)"
        kargs = after
    keys = con.execute(
        f"SELECT id, {sort.column} FROM {_index(con)} "
        f"WHERE {where} AND {keyset} "
        f"ORDER BY {sort.column} {direction} NULLS LAST, id {direction} "
        f"LIMIT {query.limit + 1}",
        args + kargs,
    ).fetchall()
    next_cursor = None
    if len(keys) > query.limit:
        keys = keys[: query.limit]
        next_cursor = encode_cursor([keys[-1][1], keys[-1][0]])  # (sort value, id)
    cards = {}
    if keys:
        cur = con.execute(
            f"SELECT {CARD_COLUMNS} FROM b_files WHERE id IN (SELECT unnest($ids))",
            {"ids": [k[0] for k in keys]},
        )
        cards = {row["id"]: row for row in _dicts(cur)}
    rows = [cards[k[0]] for k in keys if k[0] in cards]
    total = library_count(con, query) if count else None
    return Page(rows, next_cursor, total)


def library_count(con: duckdb.DuckDBPyConnection, query: LibraryQuery) -> int:
    where, args = query.where()
    table = _index(con)
    return int(con.execute(f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0])


def filter_choices(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, int]]]:
    """The values the library's filters offer, with how many present files have each."""
    one = lambda sql: [(r[0], int(r[1])) for r in con.execute(sql).fetchall()]  # noqa: E731
    return {
        "root": one("SELECT root, files FROM b_folders WHERE folder = '' ORDER BY root"),
        "format": one(
            "SELECT ltrim(extension, '.'), count(*) FROM b_files WHERE extension <> '' "
            "GROUP BY extension ORDER BY count(*) DESC, extension LIMIT 60"
        ),
        "bucket": one(
            "SELECT bucket, count(*) FROM b_files WHERE bucket IS NOT NULL GROUP BY bucket"
        ),
        "fits": one("SELECT name, models FROM b_printers ORDER BY name"),
    }


# --- a model ------------------------------------------------------------------------------
def model(con: duckdb.DuckDBPyConnection, file_id: int) -> dict | None:
    rows = _dicts(con.execute("SELECT * FROM b_files WHERE id = ?", [int(file_id)]))
    if not rows:
        return None
    item = rows[0]
    item["group"] = []
    if item["original_id"] is not None:
        item["group"] = group_members(con, item["size_bytes"], item["full_hash"])
    item["similar"] = []
    if item["similar_group_id"] is not None:
        item["similar"] = similar_members(con, item)
    return item


def similar_members(con: duckdb.DuckDBPyConnection, item: dict) -> list[dict]:
    """The other files of a file's similar_models group (the same mesh in other bytes), each
    with `identical_to`: the ids of the group's other files (this one included) holding the
    very same bytes as it, i.e. its exact duplicates within the group."""
    rows = _dicts(
        con.execute(
            f"SELECT {CARD_COLUMNS}, similar_bytes_id, first_seen_at, changed_at FROM b_similar "
            "WHERE similar_group_id = ? ORDER BY id",
            [item["similar_group_id"]],
        )
    )
    by_bytes: dict[int, list[int]] = {}
    for r in rows:
        by_bytes.setdefault(r["similar_bytes_id"], []).append(r["id"])
    for r in rows:
        r["identical_to"] = [i for i in by_bytes[r.pop("similar_bytes_id")] if i != r["id"]]
    return [r for r in rows if r["id"] != item["id"]]


def group_members(con: duckdb.DuckDBPyConnection, size_bytes: int, full_hash: str) -> list[dict]:
    return _dicts(
        con.execute(
            f"SELECT {CARD_COLUMNS}, first_seen_at, changed_at FROM b_members "
            "WHERE size_bytes = ? AND full_hash = ? ORDER BY id",
            [size_bytes, full_hash],
        )
    )


def thumbnail_relpath(con: duckdb.DuckDBPyConnection, file_id: int) -> str | None:
    row = con.execute(
        "SELECT thumbnail_relpath FROM b_files WHERE id = ? AND thumbnail_status = 'ok'",
        [int(file_id)],
    ).fetchone()
    return row[0] if row else None


# --- folders ------------------------------------------------------------------------------
def folder_view(con: duckdb.DuckDBPyConnection, root: str | None, folder: str) -> dict:
    """A folder's own counts and its subfolders' (the roots, when root is None)."""
    if root is None:
        children = _dicts(
            con.execute(
                "SELECT root, folder, root AS name, files, models, bytes FROM b_folders "
                "WHERE folder = '' ORDER BY root"
            )
        )
        return {"root": None, "folder": "", "here": None, "children": children, "trail": []}
    here = _dicts(
        con.execute("SELECT * FROM b_folders WHERE root = ? AND folder = ?", [root, folder])
    )
    children = _dicts(
        con.execute(
            "SELECT root, folder, name, files, models, bytes FROM b_folders "
            "WHERE root = ? AND parent = ? AND folder <> '' ORDER BY lower(name)",
            [root, folder],
        )
    )
    parts = [p for p in folder.split("/") if p]
    trail = [("/".join(parts[: i + 1]), parts[i]) for i in range(len(parts))]
    return {
        "root": root,
        "folder": folder,
        "here": here[0] if here else None,
        "children": children,
        "trail": trail,
    }


# --- duplicates ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KeepRule:
    key: str
    label: str
    order: str  # ORDER BY over (file_id, path, root, mtime_ns) picking the kept copy first
    needs_arg: bool = False


KEEP_RULES: dict[str, KeepRule] = {
    r.key: r
    for r in (
        KeepRule("lowest_id", "the first catalogued (lowest id, the default)", "file_id"),
        KeepRule("shortest_path", "the shortest path", "length(path), file_id"),
        KeepRule("oldest", "the oldest file (modification time)", "mtime_ns, file_id"),
        KeepRule("newest", "the newest file (modification time)", "mtime_ns DESC, file_id"),
        KeepRule(
            "prefer_root",
            "a copy under a chosen root",
            "CASE WHEN root = $arg THEN 0 ELSE 1 END, file_id",
            needs_arg=True,
        ),
    )
}


def duplicate_summary(con: duckdb.DuckDBPyConnection) -> dict:
    groups, files, reclaimable = con.execute(
        "SELECT count(*), COALESCE(sum(files - 1), 0), COALESCE(sum(reclaimable_bytes), 0) "
        "FROM b_groups"
    ).fetchone()
    reviewed = con.execute(
        "SELECT count(*) FROM b_groups g JOIN duplicate_reviews r USING (size_bytes, full_hash)"
    ).fetchone()[0]
    return {
        "duplicate_groups": int(groups),
        "duplicate_files": int(files),
        "reclaimable_bytes": int(reclaimable),
        "reviewed_groups": int(reviewed),
    }


def duplicates_page(
    con: duckdb.DuckDBPyConnection,
    cursor: str | None = None,
    limit: int = 20,
    reviewed: str | None = None,
) -> Page:
    """Groups by reclaimable bytes, each with its members and its review (if any)."""
    after = decode_cursor(cursor, 3)
    keyset, args = "true", []
    if after is not None:
        keyset = "(g.reclaimable_bytes, g.size_bytes, g.full_hash) < (?, ?, ?)"
        args = after
    review_filter = {
        "yes": "r.keep_file_id IS NOT NULL",
        "no": "r.keep_file_id IS NULL",
    }.get(reviewed or "", "true")
    groups = _dicts(
        con.execute(
            f"""
            SELECT g.*, r.keep_file_id, r.rule, r.rule_arg, r.reviewed_at
            FROM b_groups g LEFT JOIN duplicate_reviews r USING (size_bytes, full_hash)
            WHERE {keyset} AND {review_filter}
            ORDER BY g.reclaimable_bytes DESC, g.size_bytes DESC, g.full_hash DESC
            LIMIT {int(limit) + 1}
            """,
            args,
        )
    )
    next_cursor = None
    if len(groups) > limit:
        groups = groups[:limit]
        g = groups[-1]
        next_cursor = encode_cursor([g["reclaimable_bytes"], g["size_bytes"], g["full_hash"]])
    if groups:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE page_groups (size_bytes BIGINT, full_hash VARCHAR)"
        )
        con.executemany(
            "INSERT INTO page_groups VALUES (?, ?)",
            [(g["size_bytes"], g["full_hash"]) for g in groups],
        )
        members = _dicts(
            con.execute(
                f"SELECT {CARD_COLUMNS}, full_hash, first_seen_at, changed_at FROM b_files "
                "JOIN page_groups USING (size_bytes, full_hash) "
                "WHERE original_id IS NOT NULL ORDER BY id"
            )
        )
        by_group: dict[tuple, list[dict]] = {}
        for m in members:
            by_group.setdefault((m["size_bytes"], m["full_hash"]), []).append(m)
        for g in groups:
            g["members"] = by_group.get((g["size_bytes"], g["full_hash"]), [])
            ids = {m["id"] for m in g["members"]}
            g["keep_valid"] = g["keep_file_id"] in ids if g["keep_file_id"] is not None else None
            g["keep_id"] = g["keep_file_id"] if g["keep_valid"] else g["original_id"]
    return Page(groups, next_cursor)


# --- problems -----------------------------------------------------------------------------
def problems(con: duckdb.DuckDBPyConnection, examples: int = 5, bucket: str | None = None) -> dict:
    """Everything that went wrong, grouped, with counts and a few examples of each."""
    bucket_sql, bucket_args = ("AND bucket = ?", [bucket]) if bucket else ("", [])

    def grouped(where: str, cls: str, msg: str) -> list[dict]:
        rows = con.execute(
            f"""
            SELECT {cls} AS error_class, thumbnail_status, count(*) AS files,
                   bool_or(transient) AS transient,
                   list(struct_pack(id := id, path := path, message := {msg})
                        ORDER BY id)[1:{int(examples)}] AS examples
            FROM b_files WHERE {where} {bucket_sql}
            GROUP BY ALL ORDER BY files DESC, error_class
            """,
            bucket_args,
        ).fetchall()
        return [
            {
                "error_class": r[0] or "",
                "status": r[1],
                "files": int(r[2]),
                "transient": bool(r[3]),
                "examples": r[4],
            }
            for r in rows
        ]

    render = grouped(
        f"thumbnail_status IN ({_sql_list(FAILED_STATUSES)})", "error_class", "error_message"
    )
    hashing = grouped("hash_error_class IS NOT NULL", "hash_error_class", "hash_error_message")
    for g in hashing:
        g["status"] = None
    unsupported = [
        {"format": r[0], "files": int(r[1]), "examples": r[2]}
        for r in con.execute(
            f"""
            SELECT extension, count(*),
                   list(struct_pack(id := id, path := path) ORDER BY id)[1:{int(examples)}]
            FROM b_files WHERE thumbnail_status = 'unsupported' {bucket_sql}
            GROUP BY extension ORDER BY count(*) DESC
            """,
            bucket_args,
        ).fetchall()
    ]
    empty = _dicts(
        con.execute(
            f"SELECT id, path FROM b_files WHERE size_bytes = 0 {bucket_sql} ORDER BY path "
            "LIMIT 200",
            bucket_args,
        )
    )
    empty_count = con.execute(
        f"SELECT count(*) FROM b_files WHERE size_bytes = 0 {bucket_sql}", bucket_args
    ).fetchone()[0]
    walk = [
        {"kind": r[0], "files": int(r[1]), "examples": r[2]}
        for r in con.execute(
            f"""
            SELECT kind, count(*),
                   list(struct_pack(path := path, message := message)
                        ORDER BY path)[1:{int(examples)}]
            FROM walk_issues GROUP BY kind ORDER BY count(*) DESC
            """
        ).fetchall()
    ]
    return {
        "render_failures": render,
        "render_failed_files": sum(g["files"] for g in render),
        "transient_files": int(
            con.execute(
                f"SELECT count(*) FROM b_files WHERE thumbnail_status IN "
                f"({_sql_list(FAILED_STATUSES)}) AND transient {bucket_sql}",
                bucket_args,
            ).fetchone()[0]
        ),
        "hash_errors": hashing,
        "unsupported": unsupported,
        "empty_files": empty,
        "empty_count": int(empty_count),
        "walk_issues": walk,
        "bucket": bucket,
    }


def last_scan(con: duckdb.DuckDBPyConnection) -> dict | None:
    rows = _dicts(con.execute("SELECT * FROM inventory_scans ORDER BY finished_at DESC LIMIT 1"))
    return rows[0] if rows else None


HEX_KEY = re.compile(r"^[0-9a-f]{32}$")


def is_content_key(text: str) -> bool:
    """A thumbnail's content key: 32 lower-case hex digits (an MD5), nothing else."""
    return bool(HEX_KEY.match(text))
