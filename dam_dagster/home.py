"""DAGSTER_HOME: where run history, partition status and sensor cursors survive restarts.

Defaults to `$DAM_DATA_DIR/dagster_home`. Its `dagster.yaml` is written once by the project
(and never overwritten, so edits stick): a run queue of up to 10 runs at once (a backfill
launches one run per partition) and concurrency pools of one for the catalogue writers and
for each render lane.
"""

import os
from pathlib import Path

from .core.config import dagster_home

DAGSTER_YAML = """\
# Written by dam_dagster the first time DAGSTER_HOME was prepared. It is not overwritten:
# edit it freely, or delete it to get the default back.
telemetry:
  enabled: false

concurrency:
  runs:
    # A backfill launches one run per partition; at most this many are in progress.
    max_concurrent_runs: 10
  pools:
    # Pools used: dam_catalogue (the dedup chain, one writer at a time) and
    # thumbnails_fast / thumbnails_slow (one render pool per lane at a time, each using all
    # its worker processes). Raise a single pool with `dagster instance concurrency set`.
    default_limit: 1
    # A run waits in the queue until its pools have room, rather than starting and holding a
    # process while its step waits.
    granularity: run

run_monitoring:
  # Notice runs whose process died, so their pool slots are freed.
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 30

sensors:
  use_threads: true
  num_workers: 2
"""


def prepare_dagster_home() -> Path:
    """Create DAGSTER_HOME (and its dagster.yaml when missing); export it; return it."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
