"""The dedup chain: file_inventory -> partial_hashes -> collision_candidates -> full_hashes
-> duplicates, and its checks.

Each asset is one stage of `core.dedup` / `core.inventory` (read the docstring of core/dedup.py
for why each stage exists); this module only wires them to Dagster: resources in, progress
to the run log, figures a person wants to see out as metadata. The file inventory is asked for
by the library sensor (or by hand); every later stage follows on its own, eagerly.
"""

import dagster as dg
from pydantic import Field

from .core import dedup
from .core.changes import decode_folder, folders_by_root
from .core.config import ConfigError, env
from .core.hashing import Progress
from .core.inventory import take_prepared_walk, update_inventory
from .core.store import Catalogue, row_count, table_schema
from .core.vocabulary import COLUMN_DOCS
from .core.walk import RootUnavailable, WalkResult
from .executors import IO_TAGS
from .resources import CatalogueResource, LibraryResource

GROUP = "dedup"
# Catalogue writers queue for this pool (limit 1, set in dagster.yaml): two inventories
# interleaving would each see half of the other's changes.
POOL = "dam_catalogue"
EAGER = dg.AutomationCondition.eager()


def browser_link(path: str) -> str:
    """An address in the library browser (DAM_BROWSER_URL), for the full lists."""
    return env("DAM_BROWSER_URL").rstrip("/") + path


def table_metadata(catalogue: Catalogue, table: str) -> dict:
    """Row count and column schema (with each column's description) of a catalogue table."""
    docs = COLUMN_DOCS.get(table, {})
    with catalogue.connect(write=False) as con:
        columns = [
            dg.TableColumn(name, kind, description=docs.get(name))
            for name, kind in table_schema(con, table)
        ]
        rows = row_count(con, table)
    return {
        "dagster/column_schema": dg.TableSchema(columns=columns),
        "dagster/row_count": rows,
        "dagster/table_name": f"dam.main.{table}",
        "dagster/storage_kind": "postgresql" if catalogue.url else "duckdb",
        "catalogue": (
            dg.MetadataValue.text(catalogue.where)
            if catalogue.url
            else dg.MetadataValue.path(catalogue.where)
        ),
    }


def _present_count(catalogue: Catalogue) -> int:
    with catalogue.connect(write=False) as con:
        return row_count(con, "present_files")


def _mb(n: int) -> float:
    return round(n / 1e6, 2)


def _failures_md(failures: list[tuple[str, str, str]], limit: int = 20) -> dg.MetadataValue:
    lines = ["| file | error | message |", "|---|---|---|"]
    for path, cls, msg in failures[:limit]:
        lines.append(f"| `{path}` | {cls} | {msg} |")
    if len(failures) > limit:
        lines.append(f"| ... {len(failures) - limit} more | | |")
    return dg.MetadataValue.md("\n".join(lines))


def _hash_metadata(stats: dedup.HashStats) -> dict:
    meta = {
        "files eligible": stats.eligible,
        "files read": stats.files_read,
        "bytes read": stats.bytes_read,
        "MB read": _mb(stats.bytes_read),
        "files reused (unchanged, not read)": stats.reused,
        "errors": stats.errors,
        "seconds": round(stats.seconds, 3),
    }
    if stats.failures:
        meta["failures"] = _failures_md(stats.failures)
    return meta


def _fail_on_transient(stats: dedup.HashStats, what: str) -> None:
    """Transient read errors fail the run at the end, after every result is written."""
    if stats.transient_errors:
        examples = "; ".join(f"{p}: {c} {m}" for p, c, m in stats.failures[:5])
        raise dg.Failure(
            description=f"{what}: {stats.transient_errors} file(s) could not be read because of "
            f"I/O errors that may pass (a share dropping out?). Everything else was "
            f"recorded; re-run to retry them. {examples}",
            metadata=_hash_metadata(stats),
        )


def _progress(context: dg.AssetExecutionContext):
    return lambda p: context.log.info(p.describe() if isinstance(p, Progress) else p)


class InventoryConfig(dg.Config):
    folders: list[str] = Field(
        default_factory=list,
        description="Only list these folders (absolute paths; the library sensor fills this in "
        "with the folders whose mtime moved). Empty: a complete walk of every root.",
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    pool=POOL,
    op_tags=IO_TAGS,
    description="Every file under the library roots, one row each with a stable file_id. "
    "Incremental: unchanged files are not touched, missing ones are marked not present.",
)
def file_inventory(
    context: dg.AssetExecutionContext,
    config: InventoryConfig,
    library: LibraryResource,
    catalogue: CatalogueResource,
) -> dg.MaterializeResult:
    try:
        roots = library.root_paths()
        catalogue.check_outside(roots)
    except ConfigError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    only = None
    if config.folders:
        only = folders_by_root([decode_folder(f) for f in config.folders], roots)
        context.log.info(f"listing {sum(map(len, only.values())):,} folders whose mtime moved")

    def on_walk(w: WalkResult) -> None:
        context.log.info(
            f"walking: {len(w):,} files, {w.bytes_seen / 1e9:,.2f} GB, {w.dirs:,} folders so far"
        )

    cat = catalogue.catalogue(context.log)
    try:
        stats = update_inventory(
            cat,
            roots,
            library.path_filter(),
            library.follow_symlinks,
            on_progress=on_walk,
            io_threads=library.io_threads,
            only=only,
            walk=take_prepared_walk(roots, library.path_filter(), library.follow_symlinks)
            if only is None
            else None,
        )
    except RootUnavailable as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    for warning in stats.warnings:
        context.log.warning(warning)
    context.log.info(
        f"{stats.files_seen:,} files ({stats.bytes_seen / 1e9:,.2f} GB): "
        f"{stats.new_files} new, {stats.changed_files} changed, "
        f"{stats.gone_files} gone, {stats.issues} walk issues"
    )
    issues = {f"walk issues: {kind}": n for kind, n in sorted(stats.issues_by_kind.items())}
    table = table_metadata(cat, "file_inventory")
    return dg.MaterializeResult(
        metadata={
            **table,
            "roots": dg.MetadataValue.md("\n".join(f"- `{r}`" for r in stats.roots)),
            "files seen": stats.files_seen,
            # The table keeps a row for every file ever seen: gone ones are marked, not deleted.
            "rows for files no longer present": table["dagster/row_count"] - _present_count(cat),
            "bytes seen": stats.bytes_seen,
            "GB seen": round(stats.bytes_seen / 1e9, 3),
            "new files": stats.new_files,
            "changed files": stats.changed_files,
            "files back after being gone": stats.returned_files,
            "gone files": stats.gone_files,
            "excluded by patterns": stats.excluded,
            "walk issues": stats.issues,
            **issues,
            "walk seconds": round(stats.walk_seconds, 3),
            **(
                {"warnings": dg.MetadataValue.md("\n".join(f"- {w}" for w in stats.warnings))}
                if stats.warnings
                else {}
            ),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    pool=POOL,
    op_tags=IO_TAGS,
    deps=[file_inventory],
    automation_condition=EAGER,
    description="MD5 of each file's first and last 64 KiB and its size, for files whose size "
    "another file shares (files up to 128 KiB get their full hash from the same read).",
)
def partial_hashes(
    context: dg.AssetExecutionContext, library: LibraryResource, catalogue: CatalogueResource
) -> dg.MaterializeResult:
    cat = catalogue.catalogue(context.log)
    stats = dedup.update_partial_hashes(
        cat,
        library.io_threads,
        library.hash_all_sizes,
        library.follow_symlinks,
        _progress(context),
    )
    context.log.info(
        f"{stats.files_read:,} files read "
        f"({stats.bytes_read / 1e6:,.1f} MB), {stats.reused:,} unchanged, "
        f"{stats.skipped_unique_size:,} skipped for their unique size"
    )
    _fail_on_transient(stats, "partial hashes")
    return dg.MaterializeResult(
        metadata={
            **table_metadata(cat, "partial_hashes"),
            **_hash_metadata(stats),
            "files skipped: unique size (tier 0)": stats.skipped_unique_size,
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    pool=POOL,
    op_tags=IO_TAGS,
    deps=[partial_hashes],
    automation_condition=EAGER,
    description="Groups of present files sharing (size, partial hash): the only files read in "
    "full. Zero-byte files are reported as empty instead.",
)
def collision_candidates(
    context: dg.AssetExecutionContext, catalogue: CatalogueResource
) -> dg.MaterializeResult:
    cat = catalogue.catalogue(context.log)
    stats = dedup.update_collision_candidates(cat)
    context.log.info(
        f"{stats.groups:,} candidate groups, {stats.files:,} files; "
        f"{stats.empty_files:,} empty files"
    )
    return dg.MaterializeResult(
        metadata={
            **table_metadata(cat, "collision_candidates"),
            "candidate groups": stats.groups,
            "candidate files": stats.files,
            "candidate MB": _mb(stats.bytes),
            "empty files (zero bytes, not grouped)": stats.empty_files,
            "files with a partial hash": stats.hashed_files,
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    pool=POOL,
    op_tags=IO_TAGS,
    deps=[collision_candidates],
    automation_condition=EAGER,
    description="MD5 of the whole file, for collision candidates only.",
)
def full_hashes(
    context: dg.AssetExecutionContext, library: LibraryResource, catalogue: CatalogueResource
) -> dg.MaterializeResult:
    cat = catalogue.catalogue(context.log)
    stats = dedup.update_full_hashes(
        cat, library.io_threads, library.follow_symlinks, _progress(context)
    )
    context.log.info(
        f"{stats.files_read:,} files read "
        f"({stats.bytes_read / 1e6:,.1f} MB), {stats.from_small_file_read:,} "
        f"from the partial read, {stats.reused:,} unchanged"
    )
    _fail_on_transient(stats, "full hashes")
    return dg.MaterializeResult(
        metadata={
            **table_metadata(cat, "full_hashes"),
            **_hash_metadata(stats),
            "full hashes from the partial read (<= 128 KiB)": stats.from_small_file_read,
        }
    )


def _largest_md(groups: list[dedup.DuplicateGroup], total: int) -> dg.MetadataValue:
    if not groups:
        return dg.MetadataValue.md("No duplicates.")
    lines = [
        f"The groups that free the most space ({len(groups)} of {total:,}). Every group, with "
        f"thumbnails and a choice of the copy to keep: [Duplicates]({browser_link('/duplicates')})",
        "",
        "| files | duplicate files | size (MB) | reclaimable (MB) | original | a copy |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        lines.append(
            f"| {len(g.duplicates) + 1} | {len(g.duplicates)} | {_mb(g.size_bytes)} "
            f"| {_mb(g.reclaimable_bytes)} | `{g.original}` | `{g.duplicates[0]}` |"
        )
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb"},
    pool=POOL,
    op_tags=IO_TAGS,
    deps=[full_hashes],
    automation_condition=EAGER,
    description="Groups of identical files. The lowest file_id is the original; every other "
    "member has duplicate_of_id = that id. Nothing is ever deleted or moved.",
)
def duplicates(
    context: dg.AssetExecutionContext, catalogue: CatalogueResource
) -> dg.MaterializeResult:
    cat = catalogue.catalogue(context.log)
    stats = dedup.update_duplicates(cat)
    context.log.info(
        f"{stats.groups:,} duplicate groups, {stats.duplicate_files:,} duplicate "
        f"files, {stats.reclaimable_bytes / 1e6:,.1f} MB reclaimable"
    )
    table = table_metadata(cat, "duplicates")
    return dg.MaterializeResult(
        metadata={
            **table,
            "duplicate groups": stats.groups,
            "duplicate files": stats.duplicate_files,
            # The table has a row for every member, originals included: say so beside it.
            "files in duplicate groups (table rows: originals + duplicate files)": table[
                "dagster/row_count"
            ],
            "reclaimable bytes": stats.reclaimable_bytes,
            "reclaimable MB": _mb(stats.reclaimable_bytes),
            "largest groups": _largest_md(stats.largest, stats.groups),
            "review them in the library browser": dg.MetadataValue.url(browser_link("/duplicates")),
        }
    )


@dg.asset_check(
    asset=duplicates,
    op_tags=IO_TAGS,  # reads the catalogue only
    blocking=True,
    automation_condition=EAGER,
    description="Every copy has the same size and full hash as its original, the original is "
    "present and has the lowest id.",
)
def duplicates_are_consistent(catalogue: CatalogueResource) -> dg.AssetCheckResult:
    bad = dedup.inconsistent_duplicates(catalogue.catalogue())
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={
            "inconsistent copies": len(bad),
            "examples": dg.MetadataValue.md(
                "\n".join(f"- file_id {i}: {why}" for i, why in bad[:20]) or "none"
            ),
        },
    )


@dg.asset_check(
    asset=full_hashes,
    op_tags=IO_TAGS,  # reads the catalogue only
    automation_condition=EAGER,
    description="Every collision candidate has a full hash or a recorded error.",
)
def candidates_have_full_hashes(catalogue: CatalogueResource) -> dg.AssetCheckResult:
    missing = dedup.unhashed_candidates(catalogue.catalogue())
    return dg.AssetCheckResult(
        passed=not missing,
        metadata={
            "candidates without a full hash": len(missing),
            "examples": dg.MetadataValue.md("\n".join(f"- `{p}`" for p in missing[:20]) or "none"),
        },
    )


ASSETS = [file_inventory, partial_hashes, collision_candidates, full_hashes, duplicates]
# What library_sensor launches: a named job, so its runs show their target in the UI.
inventory_job = dg.define_asset_job(
    "file_inventory_job",
    selection=[file_inventory],
    description="A new inventory of the library (the rest follows by automation).",
)
CHECKS = [duplicates_are_consistent, candidates_have_full_hashes]
dedup_job = dg.define_asset_job(
    "dedup",
    selection=dg.AssetSelection.assets(*ASSETS),
    description="The whole dedup chain, from the walk to the duplicate groups.",
)
