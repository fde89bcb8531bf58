"""Configuration: every setting is an environment variable with a documented default.

Precedence, highest first: the real environment, `.env.local`, `.env` (both looked up in the
current directory). The Dagster resources and the `dam` command read the same variables, so
the UI and the terminal always agree. docs/CONFIGURATION.md lists them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values


@dataclass(frozen=True)
class EnvSetting:
    name: str
    default: str
    help: str


# The single list of settings: defaults live here and nowhere else.
SETTINGS: tuple[EnvSetting, ...] = (
    EnvSetting("DAM_LIBRARY_ROOTS", "", "Library folders to catalogue, separated by ':'."),
    EnvSetting("DAM_DATA_DIR", "data", "Where the catalogue, thumbnails and Dagster home live."),
    EnvSetting("DAM_INCLUDE", "", "Comma-separated glob patterns; only matching files are kept."),
    EnvSetting("DAM_EXCLUDE", "", "Comma-separated glob patterns excluded on top of the defaults."),
    EnvSetting("DAM_FOLLOW_SYMLINKS", "0", "1 to follow symbolic links (loops are detected)."),
    EnvSetting("DAM_IO_THREADS", "16", "Threads reading library files at once."),
    EnvSetting("DAM_HASH_ALL_SIZES", "0", "1 to hash every file, even those of a unique size."),
    EnvSetting(
        "DAM_CATALOGUE_URL",
        "",
        "The catalogue in PostgreSQL (postgresql://user@host:5432/dam) for several machines; "
        "empty: the DuckDB file in DAM_DATA_DIR.",
    ),
    EnvSetting("DAM_LOCK_TIMEOUT_S", "300", "Seconds to wait for the catalogue lock."),
    EnvSetting("DAM_SENSOR_INTERVAL_S", "120", "Seconds between two looks of the library sensor."),
    EnvSetting(
        "DAM_AUTOMATION_INTERVAL_S",
        "30",
        "Seconds between two evaluations of the automation sensor (what follows an update).",
    ),
    EnvSetting(
        "DAM_SENSOR_BUDGET_S",
        "20",
        "Seconds one look of the library sensor may spend on folder mtimes (it goes on next tick).",
    ),
    EnvSetting(
        "DAM_COMPLETE_WALK_CRON",
        "0 3 * * *",
        "When the complete walk runs (cron): it finds files rewritten in place, and checks all.",
    ),
    EnvSetting("DAM_SIZE_THRESHOLD_MB", "30", "Files at or over this size go to the slow lane."),
    EnvSetting(
        "DAM_RENDER_SHARDS",
        "1",
        "Render partitions per size bucket, split by a hash of the path (several machines).",
    ),
    EnvSetting("DAM_FAST_WORKERS", "", "Fast-lane render processes (default: CPU count)."),
    EnvSetting("DAM_SLOW_WORKERS", "", "Slow-lane render processes (default: CPU count / 4)."),
    EnvSetting("DAM_FAST_TIMEOUT_S", "120", "Per-file render timeout in the fast lane."),
    EnvSetting("DAM_SLOW_TIMEOUT_S", "600", "Per-file render timeout in the slow lane."),
    EnvSetting("DAM_THUMBNAIL_SIZE", "256", "Thumbnail width and height in pixels."),
    EnvSetting("DAM_THUMBNAIL_BACKGROUND", "transparent", "'transparent' or a colour (#rrggbb)."),
    EnvSetting(
        "DAM_RENDER_MEMORY_MB",
        "",
        "Memory cap per render process (default: a quarter of the machine's memory per lane, "
        "shared by its processes, 512-4096).",
    ),
    EnvSetting("DAM_WORKER_MAX_FILES", "500", "A render process is recycled after this many."),
    EnvSetting(
        "DAM_PREFER_EMBEDDED", "1", "1 to use a 3MF's embedded preview instead of rendering."
    ),
    EnvSetting(
        "DAM_PRINTERS",
        # build volumes from the makers' specifications, mm
        "Prusa MINI=180x180x180, Prusa MK4=250x210x220, Prusa XL=360x360x360, "
        "Bambu Lab A1 mini=180x180x180, Bambu Lab X1/P1/A1=256x256x256, "
        "Creality Ender-3=220x220x250",
        "Printers models are checked against: Name=XxYxZ (mm), separated by commas.",
    ),
    # Several machines (docs/CLUSTER.md): Dagster's storage in PostgreSQL, the celery executor.
    EnvSetting(
        "DAM_EXECUTOR",
        "in_process",
        "Where a run's steps execute: in_process (its own process) or celery (workers).",
    ),
    EnvSetting(
        "DAM_DAGSTER_STORAGE_URL",
        "",
        "Dagster's run/event/schedule storage: postgresql+psycopg2://... (default: SQLite).",
    ),
    EnvSetting("DAM_CELERY_BROKER", "redis://127.0.0.1:6379/0", "The Celery broker (Redis)."),
    EnvSetting("DAM_CELERY_BACKEND", "", "Celery's result backend (default: the broker)."),
    EnvSetting(
        "DAM_CELERY_VISIBILITY_TIMEOUT_S",
        "43200",
        "Seconds before a killed worker's step goes to another worker: above the longest step.",
    ),
    EnvSetting("DAM_RENDER_QUEUE", "render_cpu", "The Celery queue of the render lanes."),
    # The library browser (`dam serve`, started by `make dev` beside the Dagster UI).
    EnvSetting("DAM_BROWSER_HOST", "127.0.0.1", "Address the library browser listens on."),
    EnvSetting("DAM_BROWSER_PORT", "3001", "Port of the library browser."),
    EnvSetting(
        "DAM_BROWSER_URL",
        "http://127.0.0.1:3001",
        "The browser's address as people open it: the Dagster UI's links point here.",
    ),
    EnvSetting(
        "DAM_DAGSTER_URL",
        "http://127.0.0.1:3000",
        "The Dagster UI: the browser links to it and launches backfills through it.",
    ),
)
SETTING_NAMES = frozenset(s.name for s in SETTINGS)
DEFAULTS = {s.name: s.default for s in SETTINGS}

# Folders and files that are never part of a library: version control, NAS and OS litter.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    "@eaDir",
    "#recycle",
    "#snapshot",
    ".snapshot",
    "@Recycle",
    "$RECYCLE.BIN",
    "System Volume Information",
    ".Trash-*",
    ".Trashes",
    ".Spotlight-V100",
    ".fseventsd",
    ".TemporaryItems",
    ".DS_Store",
    "._*",
    "Thumbs.db",
    "ehthumbs.db",
    "desktop.ini",
    ".stfolder",
    ".stversions",
    "__MACOSX",
    "*.part",
    "*.crdownload",
    "~$*",
)


def load_env_files(directory: str | os.PathLike | None = None) -> dict[str, str]:
    """Put `.env` and `.env.local` values into os.environ without overriding real ones.

    Returns the values that were applied. `.env.local` wins over `.env`.
    """
    directory = Path(directory or os.getcwd())
    merged: dict[str, str] = {}
    for name in (".env", ".env.local"):
        path = directory / name
        if path.is_file():
            merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    applied = {k: v for k, v in merged.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


def env(name: str) -> str:
    """The value of a setting: the environment if set (and not empty), else its default."""
    if name not in SETTING_NAMES:
        raise KeyError(f"unknown setting {name}")
    value = os.environ.get(name, "")
    return value if value.strip() != "" else DEFAULTS[name]


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {value!r}")


def parse_patterns(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def parse_roots(value: str) -> tuple[Path, ...]:
    """`DAM_LIBRARY_ROOTS`: absolute, normalised, in order, without repeats."""
    roots: list[Path] = []
    for part in value.split(os.pathsep):
        part = part.strip()
        if not part:
            continue
        path = Path(os.path.abspath(os.path.expanduser(part)))
        if path not in roots:
            roots.append(path)
    return tuple(roots)


def data_dir() -> Path:
    return Path(os.path.abspath(os.path.expanduser(env("DAM_DATA_DIR"))))


def dagster_home() -> Path:
    """DAGSTER_HOME if set, else `$DAM_DATA_DIR/dagster_home`."""
    explicit = os.environ.get("DAGSTER_HOME", "").strip()
    return Path(os.path.abspath(explicit)) if explicit else data_dir() / "dagster_home"


def physical_memory_mb() -> int:
    """The memory this process may use: the machine's, or its container's (cgroup) if less."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total >> 20


def default_render_memory_mb(workers: int, memory_mb: int | None = None) -> int:
    """The memory cap of one render process when DAM_RENDER_MEMORY_MB is not set.

    Both lanes may run at once, so each lane gets a quarter of the machine's memory (half of
    it for rendering in all), split evenly between its processes, and each process between
    512 MB and 4 GB: 4 GB on a 24 GB machine with 2 workers, 512 MB per fast-lane worker and
    2 GB for the slow lane's one on an 8 GB NAS with 4 CPUs."""
    total = physical_memory_mb() if memory_mb is None else memory_mb
    return max(512, min(4096, total // 4 // max(1, workers)))


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ConfigError(ValueError):
    """A setting that cannot work, with the sentence a person needs to fix it."""


def check_data_dir_outside_roots(data: Path, roots: tuple[Path, ...]) -> None:
    """The pipeline never writes inside a library root: refuse a data folder placed there."""
    data = Path(os.path.realpath(data))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if data == real_root or real_root in data.parents:
            raise ConfigError(
                f"DAM_DATA_DIR ({data}) is inside the library root {root}; the pipeline never "
                "writes into a library. Point DAM_DATA_DIR somewhere else."
            )
