"""What the catalogue knows, in numbers: the figures behind `dam status`."""

from __future__ import annotations

import duckdb

from .store import Catalogue
from .vocabulary import FAILED_STATUSES


def catalogue_status(catalogue: Catalogue) -> dict[str, int]:
    with catalogue.connect(write=False) as con:
        return status_figures(con)


def status_figures(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """The figures over a connection to the catalogue or to a replica of it (the browser's):
    the same SQL, so `dam status` and the Status page agree. Labels: vocabulary.STATUS_LABELS.
    """
    one = lambda sql: int(con.execute(sql).fetchone()[0] or 0)  # noqa: E731
    status = {
        "files": one("SELECT count(*) FROM library_files"),
        "bytes": one("SELECT COALESCE(sum(size_bytes), 0) FROM library_files"),
        "models": one("SELECT count(*) FROM models"),
        "files_not_present": one("SELECT count(*) FROM file_inventory WHERE NOT present"),
        "empty_files": one("SELECT count(*) FROM empty_files"),
        "hashed_files": one(
            "SELECT count(*) FROM library_files "
            "WHERE partial_hash IS NOT NULL OR full_hash IS NOT NULL"
        ),
        "hash_errors": one(
            "SELECT (SELECT count(*) FROM current_partial_hashes WHERE error_class IS NOT NULL)"
            " + (SELECT count(*) FROM current_full_hashes WHERE error_class IS NOT NULL)"
        ),
        "collision_groups": one(
            "SELECT count(DISTINCT (size_bytes, partial_hash)) FROM collision_candidates"
        ),
        "duplicate_groups": one("SELECT count(DISTINCT original_id) FROM duplicates"),
        "duplicate_files": one("SELECT count(*) FROM library_files WHERE is_duplicate = 1"),
        "reclaimable_bytes": one(
            "SELECT COALESCE(sum(size_bytes), 0) FROM library_files WHERE is_duplicate = 1"
        ),
        "thumbnails_ok": one("SELECT count(*) FROM library_files WHERE has_thumbnail = 1"),
        "thumbnails_failed": one(
            "SELECT count(*) FROM library_files WHERE "
            f"thumbnail_status IN ({', '.join(repr(s) for s in FAILED_STATUSES)})"
        ),
        "thumbnails_unsupported": one(
            "SELECT count(*) FROM library_files WHERE thumbnail_status = 'unsupported'"
        ),
        "models_without_thumbnail": one("SELECT count(*) FROM models WHERE has_thumbnail = 0"),
        "walk_issues": one("SELECT count(*) FROM walk_issues"),
    }
    return status
