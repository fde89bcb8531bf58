"""The library browser's application: settings, the replica, templates, and safety headers.

    create_app(Settings.from_env())  -> a Starlette app; `dam serve` runs it with uvicorn

Pages are rendered on the server from core/browse.py's reads over the replica (core/replica.py);
routes.py maps addresses to them. Nothing here opens a library file except the download of a
model by its catalogue id, and nothing writes anywhere but the review table.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.templating import Jinja2Templates

from ..core import config
from ..core.replica import Replica
from ..core.store import Catalogue
from ..core.thumbnails import size_buckets
from ..core.vocabulary import (
    FAILED_STATUSES,
    RUN_QUEUE_LABELS,
    STATUS_LABELS,
    THUMBNAIL_SOURCE_LABELS,
    THUMBNAIL_STATUS_LABELS,
)

HERE = Path(__file__).parent


@dataclass
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 3001
    dagster_url: str = "http://127.0.0.1:3000"
    threshold_mb: int = 30
    poll_s: float = 1.0
    dagster_home: Path | None = None
    extra_hosts: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls, host: str | None = None, port: int | None = None) -> Settings:
        return cls(
            data_dir=config.data_dir(),
            host=host or config.env("DAM_BROWSER_HOST"),
            port=int(port or config.env("DAM_BROWSER_PORT")),
            dagster_url=config.env("DAM_DAGSTER_URL").rstrip("/"),
            threshold_mb=int(config.env("DAM_SIZE_THRESHOLD_MB")),
            dagster_home=config.dagster_home(),
        )


def human_bytes(n) -> str:
    if n is None:
        return ""
    n = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def ns_date(ns) -> str:
    if ns is None:
        return ""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def number(value, digits: int | None = None) -> str:
    """A measured figure as the Model page shows it: thousands separated and no decimals from
    1,000, one decimal from 10, three significant digits below (a scan in metres is 0.155 mm
    across); `digits` fixes the decimals."""
    if value is None:
        return ""
    value = float(value)
    if digits is not None:
        return f"{value:,.{digits}f}"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:,.1f}"
    if size == 0:
        return "0"
    places = min(9, 2 - math.floor(math.log10(size)))
    return f"{value:.{places}f}".rstrip("0").rstrip(".")


def duration(seconds) -> str:
    """A slicer's print-time estimate: '1 h 2 min', '12 min 5 s'."""
    if seconds is None:
        return ""
    s = int(round(float(seconds)))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d} d"] * bool(d) + [f"{h} h"] * bool(h) + [f"{m} min"] * bool(m)
    if not d and not h:
        parts.append(f"{s} s")
    return " ".join(parts)


def when(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, timezone.utc)
    if value.tzinfo is None:  # the catalogue stores UTC without a zone
        value = value.replace(tzinfo=timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def plural(n: int, one: str, many: str | None = None) -> str:
    """'1 file', '2 files': the noun for a count (the count itself is the template's)."""
    return one if n == 1 else (many or one + "s")


def make_templates(settings: Settings) -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every name, path and message is escaped: they come from a library
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        bytes=human_bytes,
        ns_date=ns_date,
        when=when,
        urlq=quote,
        num=number,
        duration=duration,
        plural=plural,
    )
    env.globals.update(
        STATUS_LABELS=STATUS_LABELS,
        RUN_QUEUE_LABELS=RUN_QUEUE_LABELS,
        THUMBNAIL_STATUS_LABELS=THUMBNAIL_STATUS_LABELS,
        THUMBNAIL_SOURCE_LABELS=THUMBNAIL_SOURCE_LABELS,
        FAILED_STATUSES=FAILED_STATUSES,
        dagster_url=settings.dagster_url,
        urlencode=lambda d: urlencode(d, doseq=False),
        dict=dict,
    )
    return Jinja2Templates(env=env)


def create_app(settings: Settings, start_replica: bool = True) -> Starlette:
    from .routes import routes

    catalogue = Catalogue(settings.data_dir, lock_timeout_s=5, who="dam serve")
    replica = Replica(
        catalogue,
        settings.data_dir / "browser",
        size_buckets(settings.threshold_mb),
        poll_s=settings.poll_s,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if start_replica:
            replica.start()
        app.state.started = time.time()
        try:
            yield
        finally:
            replica.stop()

    hosts = {"127.0.0.1", "localhost", "[::1]", "::1", settings.host, *settings.extra_hosts}
    if settings.host in ("0.0.0.0", "::"):
        hosts = {"*"}  # told to listen everywhere: any name that reaches it
    app = Starlette(
        routes=routes(),
        lifespan=lifespan,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=sorted(hosts))],
    )
    app.state.settings = settings
    app.state.catalogue = catalogue
    app.state.replica = replica
    app.state.templates = make_templates(settings)
    app.state.thumbs_dir = Path(os.path.realpath(catalogue.thumbs_dir))
    return app
