"""What the catalogue knows, in numbers: the figures behind `dam status`.

One pass over `library_files` gives every per-file figure (a million rows: one scan of the
joined view, not one per figure), and a few small queries the rest.
"""

from __future__ import annotations

import duckdb

from .store import Catalogue
from .vocabulary import FAILED_STATUSES

_PER_FILE = """
    SELECT
        count(*),
        COALESCE(sum(size_bytes), 0),
        count(*) FILTER (WHERE is_model),
        count(*) FILTER (WHERE partial_hash IS NOT NULL OR full_hash IS NOT NULL),
        count(*) FILTER (WHERE is_duplicate = 1),
        COALESCE(sum(size_bytes) FILTER (WHERE is_duplicate = 1), 0),
        count(*) FILTER (WHERE has_thumbnail = 1),
        count(*) FILTER (WHERE thumbnail_status IN ({failed})),
        count(*) FILTER (WHERE thumbnail_status = 'unsupported'),
        count(*) FILTER (WHERE is_model AND has_thumbnail = 0),
        count(*) FILTER (WHERE size_bytes = 0)
    FROM library_files
""".format(failed=", ".join(f"'{s}'" for s in FAILED_STATUSES))
_PER_FILE_KEYS = (
    "files", "bytes", "models", "hashed_files", "duplicate_files", "reclaimable_bytes",
    "thumbnails_ok", "thumbnails_failed", "thumbnails_unsupported", "models_without_thumbnail",
    "empty_files",
)  # fmt: skip


def catalogue_status(catalogue: Catalogue) -> dict[str, int]:
    with catalogue.connect(write=False) as con:
        return status_figures(con)


def status_figures(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The figures over a connection to the catalogue or to a replica of it (the browser's):
    the same SQL, so `dam status` and the Status page agree. Labels: vocabulary.STATUS_LABELS.
    """
    one = lambda sql: int(con.execute(sql).fetchall()[0][0] or 0)  # noqa: E731
    per_file = dict(zip(_PER_FILE_KEYS, con.execute(_PER_FILE).fetchall()[0]))
    status = {
        "files": per_file["files"],
        "bytes": per_file["bytes"],
        "models": per_file["models"],
        "files_not_present": one("SELECT count(*) FROM file_inventory WHERE NOT present"),
        "empty_files": per_file["empty_files"],
        "hashed_files": per_file["hashed_files"],
        "hash_errors": one(
            "SELECT (SELECT count(*) FROM current_partial_hashes WHERE error_class IS NOT NULL)"
            " + (SELECT count(*) FROM current_full_hashes WHERE error_class IS NOT NULL)"
        ),
        "collision_groups": one(
            "SELECT count(DISTINCT (size_bytes, partial_hash)) FROM collision_candidates"
        ),
        "duplicate_groups": one("SELECT count(DISTINCT original_id) FROM duplicates"),
        "duplicate_files": per_file["duplicate_files"],
        "reclaimable_bytes": per_file["reclaimable_bytes"],
        "thumbnails_ok": per_file["thumbnails_ok"],
        "thumbnails_failed": per_file["thumbnails_failed"],
        "thumbnails_unsupported": per_file["thumbnails_unsupported"],
        "models_without_thumbnail": per_file["models_without_thumbnail"],
        "models_measured": one(
            "SELECT count(*) FROM current_model_facts WHERE error_class IS NULL"
        ),
        "similar_groups": one("SELECT count(DISTINCT group_id) FROM similar_models"),
        "walk_issues": one("SELECT count(*) FROM walk_issues"),
    }
    return {k: int(v or 0) for k, v in status.items()}
