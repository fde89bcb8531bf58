"""Thumbnails in two lanes split by file size, each partitioned by size bucket.

    file_inventory -> thumbnails_fast   <1MB, 1-5MB, 5-30MB        many workers, 120 s timeout
    file_inventory -> thumbnails_slow   30-100MB, 100-500MB, >=500MB  few workers, 600 s timeout

A huge file never blocks small ones: the lanes have their own pools of render processes and
their own concurrency pools, so both run at once. Within a partition only files without a
current thumbnail are rendered (core/thumbnails.py says exactly which); every model parsed is
measured in the same pass (geometry facts, fingerprint, print facts: `model_facts`).
Permanent failures are recorded and kept until the file or its loader changes; failures that
may pass (timeout, memory cap, crashed worker) make the partition's run fail at its end, so
the UI shows the partition as failed and a backfill of failed partitions renders exactly those
files again. Thumbnails follow the inventory by themselves (eager automation); `retry` in the
run config (Launchpad) or the run tag `dam/retry` asks for unsupported or failed files again.
"""

import time
from enum import Enum
from urllib.parse import quote

import dagster as dg
from pydantic import Field

from .core.config import env
from .core.printers import parse_printers, sync_printers
from .core.render import make_contact_sheet_data_uri, render_files
from .core.render.capabilities import capabilities_digest
from .core.store import CatalogueError
from .core.thumbnails import (
    FAST,
    SLOW,
    BucketState,
    OutcomeWriter,
    bucket_state,
    lane_counts,
    lane_stats,
    loader_changes,
    plan_bucket,
    render_partitions,
    request_retries,
)
from .core.vocabulary import FAILED_STATUSES, thumbnail_summary
from .dedup_assets import browser_link, file_inventory, table_metadata
from .executors import IO_TAGS, render_tags
from .resources import CatalogueResource, RenderResource

GROUP = "thumbnails"
EAGER = dg.AutomationCondition.eager()
# The partitions depend on DAM_SIZE_THRESHOLD_MB and DAM_RENDER_SHARDS: reload the code
# location after changing them. One shard (the default): the size buckets' own keys ('<1MB');
# more: '<1MB shard 1 of 4' ... (docs/CLUSTER.md), so that many machines share one bucket.
BUCKETS = {
    b.key: b
    for b in render_partitions(int(env("DAM_SIZE_THRESHOLD_MB")), int(env("DAM_RENDER_SHARDS")))
}
fast_partitions = dg.StaticPartitionsDefinition([k for k, b in BUCKETS.items() if b.lane == FAST])
RENDER_TAGS = render_tags()  # the Celery queue of both lanes (DAM_RENDER_QUEUE)
slow_partitions = dg.StaticPartitionsDefinition([k for k, b in BUCKETS.items() if b.lane == SLOW])


class Retry(Enum):
    none = "none"
    failed = "failed"
    unsupported = "unsupported"
    all = "all"


class LaneConfig(dg.Config):
    """Set in the Launchpad (Materialize > Open launchpad), e.g. `retry: unsupported`."""

    retry: Retry = Field(
        default=Retry.none,
        description="Render again the partition's files whose last attempt said 'unsupported' "
        "(after installing a loader), 'failed' (failed, timeout or memory), or 'all' of "
        "those; 'none' renders only what is due. A backfill can ask the same with the run tag "
        "dam/retry=<scope>.",
    )


RETRY_TAG = "dam/retry"


class _Progress:
    """done / total, rate and time left in the run log, every 15 s on long partitions."""

    def __init__(self, log, total: int, every_s: float = 15.0):
        self.log, self.total, self.every_s = log, total, every_s
        self.done = 0
        self.started = self.last = time.monotonic()

    def tick(self, _outcome) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            rate = self.done / (now - self.started)
            left = (self.total - self.done) / rate if rate else 0
            self.log.info(
                f"{self.done:,}/{self.total:,} files, {rate:.1f}/s, about {left:,.0f} s left"
            )
            self.last = now


def _failures_md(state: BucketState, bucket: str) -> dg.MetadataValue:
    """The bucket's failures as they stand now (every run so far), not only this run's."""
    if not state.failures_total:
        return dg.MetadataValue.md("No failures in this partition.")
    lines = ["| file | status | error | message |", "|---|---|---|---|"]
    for path, status, cls, msg in state.failures:
        lines.append(f"| `{path}` | {status} | {cls} | {msg[:200]} |")
    more = state.failures_total - len(state.failures)
    if more:
        link = browser_link(f"/problems?bucket={quote(bucket)}")  # the size bucket's
        lines.append(f"| ... {more:,} more: [all on the Problems page]({link}) | | | |")
    return dg.MetadataValue.md("\n".join(lines))


def _retry_scope(context: dg.AssetExecutionContext, config: LaneConfig) -> str:
    scope = config.retry.value
    tag = (context.run.tags.get(RETRY_TAG) or "").strip().lower()
    if scope == "none" and tag:
        if tag not in {r.value for r in Retry}:
            raise dg.Failure(f"run tag {RETRY_TAG}={tag!r}: use failed, unsupported or all")
        scope = tag
    return scope


def render_partition(
    context: dg.AssetExecutionContext,
    lane: str,
    renderer: RenderResource,
    catalogue: CatalogueResource,
    lane_config: LaneConfig,
) -> dg.MaterializeResult | None:
    bucket = BUCKETS[context.partition_key]
    config = renderer.config(lane)
    cat = catalogue.catalogue(context.log)
    with cat.connect() as con:  # fits_printers in the views follows DAM_PRINTERS
        sync_printers(con, parse_printers())
    scope = _retry_scope(context, lane_config)
    if scope != "none":
        marked = request_retries(cat, scope, bucket)
        context.log.info(f"retry {scope}: {sum(marked.values())} file(s) asked for again")
    plan = plan_bucket(cat, bucket, config.size, config.background)
    if plan.in_bucket == 0:
        # Nothing in this size bucket: an observation, not a materialization, so the partition
        # does not show green beside the partitions that hold models.
        context.log.info("no files of this size in the library: nothing to render")
        context.log_event(
            dg.AssetObservation(
                asset_key=context.asset_key,
                partition=context.partition_key,
                metadata={"files in the bucket": 0},
            )
        )
        return
    context.log.info(
        f"{plan.in_bucket:,} files in the bucket, {len(plan.tasks):,} to render or measure "
        f"({plan.retries} retries, {plan.missing_png} lost PNGs, {plan.renderer_changed} made "
        f"by older code, {plan.capability_changed} whose loader changed, "
        f"{plan.retry_requested} asked for, {plan.facts_missing} to measure only), "
        f"{plan.up_to_date:,} up to date; {config.workers} workers, "
        f"{config.timeout_s:.0f} s timeout"
    )
    writer = OutcomeWriter(cat, bucket, plan, config.size, config.background)
    writer.add_unsupported()
    progress = _Progress(context.log, len(plan.tasks))

    def on_outcome(outcome) -> None:
        writer.add(outcome)
        progress.tick(outcome)

    started = time.monotonic()
    render_files(plan.tasks, cat.thumbs_dir, config, on_outcome=on_outcome)
    writer.flush()
    stats = lane_stats(writer.settled, plan, cat.thumbs_dir, time.monotonic() - started)
    state = bucket_state(cat, bucket)
    context.log.info(
        f"this run: {stats.by_source.get('render', 0)} rendered, "
        f"{stats.by_source.get('cache', 0)} reused, {thumbnail_summary(stats.by_status)}, "
        f"{stats.rate:.1f} files/s; the partition now: {thumbnail_summary(state.by_status)}, "
        f"{state.not_rendered} not rendered"
    )
    table = table_metadata(cat, "thumbnails")
    lane_rows = table["dagster/row_count"]
    metadata = {
        **table,
        # The partition's own rows: the table is shared by both lanes and every bucket.
        "dagster/row_count": state.rows,
        "rows in the thumbnails table (both lanes)": lane_rows,
        "files in the bucket": plan.in_bucket,
        "files to render": len(plan.tasks),
        "up to date (not rendered)": plan.up_to_date,
        "retried: made by older code for the format": plan.renderer_changed,
        "retried: the format's loader changed": plan.capability_changed,
        "retried: asked for": plan.retry_requested,
        "measured only (thumbnail current)": plan.facts_missing,
        "models measured (model_facts rows)": writer.measured,
        "rendered": stats.by_source.get("render", 0),
        "reused (same content already rendered)": stats.by_source.get("cache", 0),
        "embedded previews": stats.by_source.get("embedded", 0),
        "images": stats.by_source.get("image", 0),
        "failed": sum(stats.by_status.get(s, 0) for s in FAILED_STATUSES),
        "unsupported": stats.by_status.get("unsupported", 0),
        **{f"status: {s}": n for s, n in sorted(stats.by_status.items())},
        "files per second": round(stats.rate, 2),
        "seconds": round(stats.seconds, 2),
        "workers": config.workers,
        "partition now: with a thumbnail": state.by_status.get("ok", 0),
        "partition now: failed": state.failures_total,
        "partition now: unsupported": state.by_status.get("unsupported", 0),
        "partition now: not rendered yet": state.not_rendered,
        "failures (partition now)": _failures_md(state, bucket.bucket_key),
        "in the library browser": dg.MetadataValue.url(
            browser_link(f"/?bucket={quote(bucket.bucket_key)}&kind=all")
        ),
    }
    sheet = make_contact_sheet_data_uri(stats.made[:24]) if stats.made else None
    if sheet:
        metadata["contact sheet"] = dg.MetadataValue.md(f"![thumbnails just made]({sheet})")
    if stats.transient_failures:
        raise dg.Failure(
            description=f"{stats.transient_failures} file(s) failed for a reason that "
            "may pass (timeout, memory cap, crashed worker, I/O error). Everything "
            "else is recorded; a backfill of failed partitions (UI, or `dam "
            "backfill-failed`) renders exactly those again.",
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "python"},
    deps=[file_inventory],
    partitions_def=fast_partitions,
    automation_condition=EAGER,
    pool="thumbnails_fast",
    output_required=False,
    op_tags=RENDER_TAGS,
    description="Thumbnails of the models under the size threshold: many workers, short timeout. "
    "Every model parsed is measured in the same pass (model_facts).",
)
def thumbnails_fast(
    context: dg.AssetExecutionContext,
    config: LaneConfig,
    renderer: RenderResource,
    catalogue: CatalogueResource,
):
    # A generator, so that an empty bucket can yield nothing (output_required=False).
    result = render_partition(context, FAST, renderer, catalogue, config)
    if result is not None:
        yield result


@dg.asset(
    group_name=GROUP,
    kinds={"duckdb", "python"},
    deps=[file_inventory],
    partitions_def=slow_partitions,
    automation_condition=EAGER,
    pool="thumbnails_slow",
    output_required=False,
    op_tags=RENDER_TAGS,
    description="Thumbnails of the models at or over the size threshold: few workers, long "
    "timeout, so huge files never hold up the small ones. Every model parsed is measured in "
    "the same pass (model_facts).",
)
def thumbnails_slow(
    context: dg.AssetExecutionContext,
    config: LaneConfig,
    renderer: RenderResource,
    catalogue: CatalogueResource,
):
    # A generator, so that an empty bucket can yield nothing (output_required=False).
    result = render_partition(context, SLOW, renderer, catalogue, config)
    if result is not None:
        yield result


def _failure_rate(lane: str, catalogue: CatalogueResource) -> dg.AssetCheckResult:
    counts = lane_counts(catalogue.catalogue(), lane)
    attempted = sum(n for s, n in counts.items() if s != "unsupported")
    failed = sum(counts.get(s, 0) for s in FAILED_STATUSES)
    rate = failed / attempted if attempted else 0.0
    return dg.AssetCheckResult(
        passed=rate <= 0.05,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failure rate": round(rate, 4),
            "failed": failed,
            "attempted": attempted,
            **{f"status: {s}": n for s, n in sorted(counts.items())},
        },
    )


@dg.asset_check(
    asset=thumbnails_fast,
    op_tags=IO_TAGS,  # reads the catalogue only
    automation_condition=EAGER,
    description="Share of the fast lane's files without a thumbnail because "
    "rendering failed (warns above 5 %).",
)
def fast_lane_failure_rate(catalogue: CatalogueResource) -> dg.AssetCheckResult:
    return _failure_rate(FAST, catalogue)


@dg.asset_check(
    asset=thumbnails_slow,
    op_tags=IO_TAGS,  # reads the catalogue only
    automation_condition=EAGER,
    description="Share of the slow lane's files without a thumbnail because "
    "rendering failed (warns above 5 %).",
)
def slow_lane_failure_rate(catalogue: CatalogueResource) -> dg.AssetCheckResult:
    return _failure_rate(SLOW, catalogue)


ASSETS = [thumbnails_fast, thumbnails_slow]
CHECKS = [fast_lane_failure_rate, slow_lane_failure_rate]
fast_job = dg.define_asset_job(
    "thumbnails_fast_job", selection=[thumbnails_fast], partitions_def=fast_partitions
)
slow_job = dg.define_asset_job(
    "thumbnails_slow_job", selection=[thumbnails_slow], partitions_def=slow_partitions
)


@dg.sensor(
    name="dam_loaders",
    jobs=[fast_job, slow_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(env("DAM_SENSOR_INTERVAL_S")),
    description="When the renderer's loaders change (a library such as cascadio installed or "
    "upgraded, or a new version of our code for a format), asks for the thumbnail partitions "
    "holding files made by other loaders; each renders exactly those files (the rest is up to "
    "date and costs a plan).",
)
def loaders_sensor(context: dg.SensorEvaluationContext, catalogue: CatalogueResource):
    digest = capabilities_digest()
    if digest == context.cursor:
        return dg.SkipReason("the loaders are the ones the thumbnails were made with")
    cat = catalogue.catalogue(who="dam_loaders")
    cat.lock_timeout_s = min(cat.lock_timeout_s, 5)
    try:
        changed = loader_changes(cat, BUCKETS.values())
    except CatalogueError:  # missing (nothing rendered yet) or busy: decide next tick
        return dg.SkipReason("no catalogue to look at yet")
    if not changed:  # the rows say so, the first look included: nothing to ask for
        return dg.SensorResult(skip_reason="no file was made by other loaders", cursor=digest)
    context.log.info(
        f"the loaders changed ({context.cursor or 'first look'} -> {digest}): "
        + ", ".join(f"{key} {n:,} file(s)" for key, n in changed.items())
    )
    requests = [
        dg.RunRequest(  # no run key: the same loaders may come back after an uninstall
            job_name=(fast_job if BUCKETS[key].lane == FAST else slow_job).name,
            partition_key=key,
        )
        for key in changed
    ]
    return dg.SensorResult(run_requests=requests, cursor=digest)


SENSORS = [loaders_sensor]
