"""One vocabulary: the words and figures that the run log, the Dagster metadata, `dam status`
and the library browser all use, defined once.

A thumbnail row has one status:

    ok           a thumbnail exists (rendered, an embedded preview, a scaled image, or reused)
    failed       the file could not be loaded or drawn (corrupt, empty mesh...): permanent
    timeout      killed at the lane's per-file timeout: may pass, retried by a backfill
    memory       killed at the memory cap: may pass, retried by a backfill
    unsupported  a model format without a renderer: not a failure, not retried

"failed" as a figure always means failed + timeout + memory (FAILED_STATUSES), never
"unsupported"; "unsupported" is always counted apart.
"""

from __future__ import annotations

THUMBNAIL_STATUS_LABELS: dict[str, str] = {
    "ok": "thumbnail made",
    "failed": "failed (the file could not be drawn)",
    "timeout": "failed: timed out",
    "memory": "failed: over the memory cap",
    "unsupported": "unsupported format (no renderer)",
}
FAILED_STATUSES: tuple[str, ...] = ("failed", "timeout", "memory")
TRANSIENT_STATUSES: tuple[str, ...] = ("timeout", "memory")  # and a crashed worker, I/O errors

THUMBNAIL_SOURCE_LABELS: dict[str, str] = {
    "render": "rendered",
    "embedded": "the slicer's embedded preview",
    "image": "the image, scaled",
    "cache": "reused (same content rendered before)",
}

# The figures of `dam status`, in order, with the label every surface shows.
STATUS_LABELS: dict[str, str] = {
    "files": "files",
    "bytes": "bytes",
    "models": "3D models",
    "files_not_present": "files gone (kept in the catalogue)",
    "empty_files": "empty files",
    "hashed_files": "hashed files",
    "hash_errors": "files that could not be hashed",
    "collision_groups": "collision groups (size + partial hash)",
    "duplicate_groups": "duplicate groups",
    "duplicate_files": "duplicate files",
    "reclaimable_bytes": "reclaimable bytes",
    "thumbnails_ok": "thumbnails",
    "thumbnails_failed": "thumbnails failed",
    "thumbnails_unsupported": "files of a format without a renderer",
    "models_without_thumbnail": "models without a thumbnail",
    "models_measured": "models measured (facts)",
    "similar_groups": "same model, different files: groups",
    "walk_issues": "walk issues",
}


# The run queue's figures in `dam status --json` and on the Status page.
RUN_QUEUE_LABELS: dict[str, str] = {
    "runs_in_progress": "runs in progress",
    "runs_queued": "runs queued",
    "run_queue_limit": "runs at most at once",
    "runs_without_process": "runs in progress without a process",
}


def thumbnail_summary(by_status: dict[str, int]) -> str:
    """'3 ok, 2 failed (1 timeout), 1 unsupported': the same sentence in log and metadata."""
    failed = sum(by_status.get(s, 0) for s in FAILED_STATUSES)
    parts = [f"{by_status.get('ok', 0):,} ok", f"{failed:,} failed"]
    detail = [f"{by_status[s]:,} {s}" for s in ("timeout", "memory") if by_status.get(s)]
    if detail:
        parts[-1] += f" ({', '.join(detail)})"
    parts.append(f"{by_status.get('unsupported', 0):,} unsupported")
    return ", ".join(parts)


# Column descriptions of the catalogue's tables, shown in the Dagster UI beside each asset's
# column schema and in docs. Keys are table names; columns missing here show no description.
COLUMN_DOCS: dict[str, dict[str, str]] = {
    "file_inventory": {
        "file_id": "Stable id, assigned the first time the path was seen, never reused.",
        "path": "Absolute path; bytes that are not UTF-8 are shown as \\xNN.",
        "raw_path": "The exact path bytes, when they are not valid UTF-8 (else NULL).",
        "root": "The library root the file was found under.",
        "rel_path": "Path relative to its root.",
        "extension": "Lower-case extension with the dot ('.stl'); '' when none.",
        "size_bytes": "Size in bytes at the last walk.",
        "mtime_ns": "Modification time at the last walk, nanoseconds since the epoch.",
        "present": "False once the file was not found by a walk (the row is kept).",
        "first_seen_at": "When a walk first found the path (UTC).",
        "changed_at": "First seen, or last seen with a new size or mtime (UTC).",
        "gone_at": "When a walk found it missing; NULL while present.",
    },
    "partial_hashes": {
        "file_id": "The file (file_inventory.file_id).",
        "size_bytes": "File size the hash was computed from (current while it matches).",
        "mtime_ns": "File mtime the hash was computed from (current while it matches).",
        "prefix_hash": "XXH64 of the first 4 KiB (a filter: files sharing it are read again).",
        "partial_hash": "MD5 of the first and last 64 KiB and the size (docs/HASHING.md); "
        "only for files sharing (size, prefix) with another.",
        "full_hash": "MD5 of the whole file, for files up to 128 KiB (read once).",
        "hashed_at": "When it was computed (UTC).",
        "error_class": "Why the file could not be read (NULL when it was).",
        "error_message": "The error's message.",
    },
    "collision_candidates": {
        "file_id": "A present file sharing (size, partial hash) with another.",
        "size_bytes": "Its size.",
        "partial_hash": "Its partial hash.",
        "group_size": "Files in its (size, partial hash) group.",
    },
    "full_hashes": {
        "file_id": "A collision candidate.",
        "size_bytes": "File size the hash was computed from.",
        "mtime_ns": "File mtime the hash was computed from.",
        "full_hash": "MD5 of the whole file.",
        "source": "'full_read', or 'small_file' (from the partial-hash read).",
        "hashed_at": "When it was computed (UTC).",
        "error_class": "Why the file could not be read (NULL when it was).",
        "error_message": "The error's message.",
    },
    "duplicates": {
        "file_id": "A member of a group of identical files (every member has a row, "
        "the original included: rows = duplicate files + groups).",
        "full_hash": "The group's content hash.",
        "size_bytes": "The group's file size.",
        "original_id": "The group's original: its lowest file_id, a file of its own before a "
        "member of an archive (zip, 7z).",
        "duplicate_of_id": "The original's id for a copy; NULL for the original itself.",
        "group_size": "Files in the group (original included).",
    },
    "thumbnails": {
        "file_id": "The file (file_inventory.file_id).",
        "size_bytes": "File size the row was made from (current while it matches).",
        "mtime_ns": "File mtime the row was made from (current while it matches).",
        "lane": "'fast' or 'slow'.",
        "bucket": "The size bucket (the partition).",
        "status": "ok, failed, timeout, memory or unsupported (failed = failed + timeout + "
        "memory; unsupported is counted apart).",
        "source": "render, embedded, image or cache (reused PNG of identical content).",
        "content_md5": "MD5 of the file: the PNG's name.",
        "thumbnail_relpath": "'ab/<md5>.png' under the thumbnails folder.",
        "thumbnail_size": "Pixels, as configured when it was made.",
        "background": "Background, as configured when it was made.",
        "error_class": "The failure's class (status other than ok).",
        "error_message": "The failure's message.",
        "transient": "True when a retry could succeed (timeout, memory, crash, I/O).",
        "render_seconds": "Time spent on the file in the worker.",
        "rendered_at": "When the row was written (UTC).",
    },
}
