"""Resources: the library (where the models are, how to read them), the catalogue store, and
the renderer's settings.

Every field is an environment variable (docs/CONFIGURATION.md). Variables that are set reach
the resources as Dagster `EnvVar`s, so the UI shows where each value came from; unset ones
take the defaults of `core.config`, the one place defaults are written.
"""

import os
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg

from .core.config import (
    ConfigError,
    check_data_dir_outside_roots,
    cpu_count,
    default_render_memory_mb,
    env,
    parse_bool,
    parse_patterns,
    parse_roots,
)
from .core.render import RenderConfig
from .core.store import Catalogue
from .core.walk import PathFilter
from .runs import claim_run


def _from_env(fields: dict[str, tuple[str, type]]) -> dict[str, Any]:
    """Resource arguments: an EnvVar for each variable that is set, the default otherwise."""
    values: dict[str, Any] = {}
    for field, (name, kind) in fields.items():
        if os.environ.get(name, "").strip():
            if kind is int:
                values[field] = dg.EnvVar.int(name)
            elif kind is str:
                values[field] = dg.EnvVar(name)
            else:  # Dagster has no boolean EnvVar: parse it here
                values[field] = parse_bool(os.environ[name])
        else:
            default = env(name)
            if default == "":  # computed at run time (a CPU count): the field's own default
                continue
            values[field] = parse_bool(default) if kind is bool else kind(default)
    return values


class LibraryResource(dg.ConfigurableResource):
    """The library roots and how they are walked and read."""

    roots: str = ""
    include: str = ""
    exclude: str = ""
    follow_symlinks: bool = False
    io_threads: int = 16  # DAM_IO_THREADS: its default is core/config.py's
    hash_all_sizes: bool = False

    ENV: ClassVar[dict[str, tuple[str, type]]] = {
        "roots": ("DAM_LIBRARY_ROOTS", str),
        "include": ("DAM_INCLUDE", str),
        "exclude": ("DAM_EXCLUDE", str),
        "follow_symlinks": ("DAM_FOLLOW_SYMLINKS", bool),
        "io_threads": ("DAM_IO_THREADS", int),
        "hash_all_sizes": ("DAM_HASH_ALL_SIZES", bool),
    }

    @classmethod
    def from_env(cls) -> "LibraryResource":
        return cls(**_from_env(cls.ENV))

    def root_paths(self) -> tuple[Path, ...]:
        roots = parse_roots(self.roots)
        if not roots:
            raise ConfigError(
                "DAM_LIBRARY_ROOTS is not set: put the library folders in .env.local, e.g. "
                "DAM_LIBRARY_ROOTS=/mnt/nas/models:/home/me/prints (or run `make dev`, which "
                "makes a sample library when it is unset)."
            )
        return roots

    def path_filter(self) -> PathFilter:
        return PathFilter(parse_patterns(self.include), parse_patterns(self.exclude))


class CatalogueResource(dg.ConfigurableResource):
    """The catalogue (the DuckDB file under the data folder, or PostgreSQL when
    catalogue_url is set): the one owner of every connection."""

    data_dir: str = "data"
    catalogue_url: str | None = None  # None: DAM_CATALOGUE_URL as the process sees it
    lock_timeout_s: int = 300

    ENV: ClassVar[dict[str, tuple[str, type]]] = {
        "data_dir": ("DAM_DATA_DIR", str),
        "catalogue_url": ("DAM_CATALOGUE_URL", str),
        "lock_timeout_s": ("DAM_LOCK_TIMEOUT_S", int),
    }

    @classmethod
    def from_env(cls) -> "CatalogueResource":
        return cls(**_from_env(cls.ENV))

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # Every run writes the catalogue: tag it with the process executing it, so that a run
        # whose process is killed can be told from one still working (dam_dagster/runs.py).
        if context.instance is not None and context.run_id:
            claim_run(context.instance, context.run_id)

    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().absolute()

    def catalogue(self, log=None, who: str = "dagster") -> Catalogue:
        on_wait = log.info if log is not None else None
        return Catalogue(
            self.data_path(), self.lock_timeout_s, on_wait=on_wait, who=who, url=self.catalogue_url
        )

    def check_outside(self, roots: tuple[Path, ...]) -> None:
        check_data_dir_outside_roots(self.data_path(), roots)


class RenderResource(dg.ConfigurableResource):
    """How thumbnails are rendered, per lane: workers, timeouts, memory, look."""

    fast_workers: int = 0  # 0: the CPU count
    slow_workers: int = 0  # 0: a quarter of the CPU count, at least 1
    fast_timeout_s: int = 120
    slow_timeout_s: int = 600
    memory_mb: int = 0  # 0: derived from the machine's memory (default_render_memory_mb)
    worker_max_files: int = 500
    thumbnail_size: int = 256
    background: str = "transparent"
    prefer_embedded: bool = True

    ENV: ClassVar[dict[str, tuple[str, type]]] = {
        "fast_workers": ("DAM_FAST_WORKERS", int),
        "slow_workers": ("DAM_SLOW_WORKERS", int),
        "fast_timeout_s": ("DAM_FAST_TIMEOUT_S", int),
        "slow_timeout_s": ("DAM_SLOW_TIMEOUT_S", int),
        "memory_mb": ("DAM_RENDER_MEMORY_MB", int),
        "worker_max_files": ("DAM_WORKER_MAX_FILES", int),
        "thumbnail_size": ("DAM_THUMBNAIL_SIZE", int),
        "background": ("DAM_THUMBNAIL_BACKGROUND", str),
        "prefer_embedded": ("DAM_PREFER_EMBEDDED", bool),
    }

    @classmethod
    def from_env(cls) -> "RenderResource":
        return cls(**_from_env(cls.ENV))

    def config(self, lane: str) -> RenderConfig:
        cpus = cpu_count()
        fast = lane == "fast"
        workers = (self.fast_workers or cpus) if fast else (self.slow_workers or max(1, cpus // 4))
        return RenderConfig(
            size=self.thumbnail_size,
            background=self.background,
            workers=workers,
            timeout_s=float(self.fast_timeout_s if fast else self.slow_timeout_s),
            memory_mb=self.memory_mb or default_render_memory_mb(workers),
            max_files_per_worker=self.worker_max_files,
            prefer_embedded=self.prefer_embedded,
        )
