"""Addresses of the library browser. Each page reads the replica through core/browse.py and
renders a template; each /api/ address returns the same data as JSON.

    /                       the library: q, kind, root, folder, format, bucket, thumbnail,
                            duplicate; the geometry facts as `dam find` has them: max_x,
                            max_y, max_z (mm), max_triangles, watertight (yes|no),
                            probably_inches (yes|no), fits (a printer's name), similar
                            (yes|no); sort (name|size|changed|triangles|volume|largest),
                            order (asc|desc), cursor
    /folders                the library's tree with counts (root, folder)
    /models/<id>            one model; /models/<id>/file downloads it, /models/<id>/thumbnail
                            redirects to its PNG
    /thumbs/<md5>.png       a thumbnail by content key (immutable)
    /duplicates             groups by reclaimable bytes; POST keep / rule / clear; plan export
    /problems               what failed; POST /problems/retry launches the failed backfill
    /status                 the figures of `dam status`, the last scan, runs in progress
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from datetime import date, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..core import browse, review
from ..core.config import env
from ..core.store import CatalogueBusy, CatalogueError
from ..core.thumbnails import partition_key, size_buckets

HERE = Path(__file__).parent
THUMB_NAME = re.compile(r"^([0-9a-f]{32})\.png$")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"

MESSAGES = {
    "kept": "Saved: that copy is kept. The plan below follows your choice.",
    "cleared": "The group's review was removed: it is left out of plans again.",
    "rule": "Saved: the keep rule was applied to {n} group(s).",
    "busy": "Not saved: the catalogue is being written by a run right now. Try again in a "
    "moment; nothing was lost.",
    "gone": "Not saved: that file is no longer a current member of its group (it changed or "
    "went away). The page shows the groups as they are now.",
    "bad": "Not saved: the form was incomplete.",
}


# --- helpers ------------------------------------------------------------------------------
def _app(request: Request):
    return request.app.state


def _default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def json_response(
    data, status_code: int = 200, headers: dict | None = None, started: float | None = None
) -> Response:
    body = json.dumps(data, default=_default, ensure_ascii=False).encode()
    response = Response(
        body,
        status_code=status_code,
        media_type="application/json",
        headers={**SECURITY_HEADERS, **(headers or {})},
    )
    if started is not None:
        response.headers.update(_timed(started))
    return response


def _timed(started: float, headers: dict | None = None) -> dict:
    return {
        **SECURITY_HEADERS,
        "Server-Timing": f"app;dur={(time.perf_counter() - started) * 1000:.1f}",
        **(headers or {}),
    }


def render(request: Request, template: str, ctx: dict, started: float, status_code: int = 200):
    state = _app(request)
    ctx.setdefault("replica", state.replica.state())
    ctx.setdefault("nav", "")
    ctx.setdefault("message", MESSAGES.get(request.query_params.get("msg", ""), ""))
    if "{n}" in ctx["message"]:
        n = request.query_params.get("n", "0")
        ctx["message"] = ctx["message"].format(n=int(n) if n.isdigit() else 0)
    ctx.setdefault("q", request.query_params.get("q", ""))
    response = state.templates.TemplateResponse(
        request, template, ctx, status_code=status_code, headers=SECURITY_HEADERS
    )
    response.headers.update(_timed(started))  # after rendering: the whole server time
    return response


def updating(request: Request, started: float, api: bool = False):
    """No copy of the catalogue yet: say why, and retry by itself (never an error page)."""
    state = _app(request).replica.state()
    if api:
        return json_response(
            {"status": "updating" if state["catalogue_exists"] else "no_catalogue", **state},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    return render(request, "updating.html", {"replica": state}, started)


def not_found(request: Request, started: float, what: str, api: bool = False):
    if api:
        return json_response({"error": f"{what} not found"}, status_code=404)
    return render(request, "not_found.html", {"what": what}, started, status_code=404)


def _cached(request: Request, key: str, cur, compute):
    """Per-replica-generation memo for figures that only change with the catalogue."""
    state = _app(request)
    gen = state.replica.generation
    cache = getattr(state, "memo", None)
    if cache is None or cache.get("_gen") != gen or len(cache) > 1000:
        cache = state.memo = {"_gen": gen}
    if key not in cache:
        cache[key] = compute(cur)
    return cache[key]


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body())[:100_000].decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _same_origin(request: Request) -> bool:
    """A POST must come from a page of this server (no other site can make one for you)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return urlsplit(origin).netloc == request.headers.get("host", "")
    return origin != "null"


def _forbidden() -> Response:
    return Response(
        "cross-site request refused",
        status_code=403,
        headers=SECURITY_HEADERS,
        media_type="text/plain",
    )


def _buckets(request: Request) -> list[str]:
    return [b.key for b in size_buckets(_app(request).settings.threshold_mb)]


# --- the library --------------------------------------------------------------------------
def library(request: Request, api: bool = False):
    started = time.perf_counter()
    query = browse.LibraryQuery.from_params(dict(request.query_params))
    partial = request.query_params.get("partial") == "1"
    with _app(request).replica.cursor() as cur:
        if cur is None:
            return updating(request, started, api)
        page = browse.library_page(cur, query, count=False)
        if not partial:  # the count does not change from page to page: once per copy
            where = json.dumps(query.where(), default=str)
            page.total = _cached(
                request, "count:" + where, cur, lambda c: browse.library_count(c, query)
            )
        choices = (
            None if (partial or api) else _cached(request, "choices", cur, browse.filter_choices)
        )
    if api:
        return json_response(
            {"items": page.rows, "next_cursor": page.next_cursor, "total": page.total},
            started=started,
        )
    next_url = None
    if page.next_cursor:
        next_url = "/?" + urlencode(query.params(cursor=page.next_cursor))
    ctx = {
        "query": query,
        "page": page,
        "next_url": next_url,
        "choices": choices,
        "buckets": _buckets(request),
        "sorts": browse.SORTS,
        "kinds": browse.KINDS,
        "thumbnail_states": browse.THUMBNAIL_STATES,
        "duplicate_states": browse.DUPLICATE_STATES,
        "watertight_states": browse.WATERTIGHT_STATES,
        "inches_states": browse.INCHES_STATES,
        "similar_states": browse.SIMILAR_STATES,
        "nav": "library",
        "q": query.q,
    }
    return render(request, "cards.html" if partial else "library.html", ctx, started)


def api_library(request: Request):
    return library(request, api=True)


def folders(request: Request, api: bool = False):
    started = time.perf_counter()
    root = request.query_params.get("root") or None
    folder = (request.query_params.get("folder") or "").strip("/")
    with _app(request).replica.cursor() as cur:
        if cur is None:
            return updating(request, started, api)
        view = browse.folder_view(cur, root, folder)
    if root is not None and view["here"] is None:
        return not_found(request, started, "folder", api)
    if api:
        return json_response(view, started=started)
    return render(request, "folders.html", {"view": view, "nav": "folders"}, started)


def api_folders(request: Request):
    return folders(request, api=True)


# --- a model ------------------------------------------------------------------------------
def model(request: Request, api: bool = False):
    started = time.perf_counter()
    file_id = request.path_params["file_id"]
    with _app(request).replica.cursor() as cur:
        if cur is None:
            return updating(request, started, api)
        item = browse.model(cur, file_id)
    if item is None:
        return not_found(request, started, f"model {file_id}", api)
    if api:
        return json_response(item, started=started)
    lane = {"fast": "thumbnails_fast", "slow": "thumbnails_slow"}
    asset = lane.get(
        item["lane"] or "",
        "thumbnails_fast" if item["bucket"] in _fast(request) else "thumbnails_slow",
    )
    # its render partition: the size bucket, or its shard of it (DAM_RENDER_SHARDS)
    partition = partition_key(item["bucket"] or "", item["path"], int(env("DAM_RENDER_SHARDS")))
    return render(
        request,
        "model.html",
        {"item": item, "asset": asset, "partition": partition, "nav": "library"},
        started,
    )


def _fast(request: Request) -> set[str]:
    return {b.key for b in size_buckets(_app(request).settings.threshold_mb) if b.lane == "fast"}


def api_model(request: Request):
    return model(request, api=True)


def model_thumbnail(request: Request):
    """/models/<id>/thumbnail: a redirect to the content-keyed PNG (the id's PNG changes when
    the file does, so only the content address is cached for good)."""
    started = time.perf_counter()
    with _app(request).replica.cursor() as cur:
        if cur is None:
            return updating(request, started, True)
        rel = browse.thumbnail_relpath(cur, request.path_params["file_id"])
    match = THUMB_NAME.match(os.path.basename(rel or ""))
    if not match:
        return not_found(request, started, "thumbnail", True)
    return RedirectResponse(
        f"/thumbs/{match.group(1)}.png",
        status_code=302,
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


def thumb(request: Request):
    """A PNG of the thumbnails folder, by content key only: 32 hex digits, nothing else."""
    match = THUMB_NAME.match(request.path_params["name"])
    if not match:
        return Response("not a thumbnail key", status_code=404, headers=SECURITY_HEADERS)
    key = match.group(1)
    thumbs = _app(request).thumbs_dir
    path = thumbs / key[:2] / f"{key}.png"
    real = Path(os.path.realpath(path))
    if thumbs not in real.parents or not real.is_file():
        return Response("no such thumbnail", status_code=404, headers=SECURITY_HEADERS)
    return FileResponse(
        real,
        media_type="image/png",
        headers={**SECURITY_HEADERS, "Cache-Control": IMMUTABLE},
    )


def model_file(request: Request):
    """The library file of a catalogue id, as a download: read, never written. No path from
    the request reaches the filesystem; the path is the catalogue's."""
    started = time.perf_counter()
    file_id = request.path_params["file_id"]
    with _app(request).replica.cursor() as cur:
        if cur is None:
            return updating(request, started, True)
        row = cur.execute(
            "SELECT path, raw_path, size_bytes, archive_id FROM file_inventory "
            "WHERE file_id = ? AND present",
            [int(file_id)],
        ).fetchone()
    if row is None:
        return not_found(request, started, f"model {file_id}")
    if row[3] is not None:  # a member of an archive: nothing to read on its own, the archive
        return RedirectResponse(f"/models/{int(row[3])}/file", status_code=302)
    path = os.fsdecode(row[1]) if row[1] is not None else row[0]
    try:
        st = os.stat(path)
    except OSError:
        return not_found(
            request, started, "that file on disk (moved or deleted since the last scan)"
        )
    if not stat.S_ISREG(st.st_mode):
        return not_found(request, started, "a regular file at that path")
    name = os.path.basename(row[0]).encode("ascii", "replace").decode()
    return FileResponse(
        path,
        stat_result=st,
        filename=name,
        media_type="application/octet-stream",
        headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


# --- duplicates ---------------------------------------------------------------------------
def duplicates(request: Request, api: bool = False):
    started = time.perf_counter()
    state = _app(request)
    cursor = request.query_params.get("cursor")
    reviewed = request.query_params.get("reviewed")
    reviewed = reviewed if reviewed in ("yes", "no") else None
    with state.replica.cursor() as cur:
        if cur is None:
            return updating(request, started, api)
        page = browse.duplicates_page(cur, cursor, limit=20, reviewed=reviewed)
        summary = browse.duplicate_summary(cur)
        roots = _cached(request, "roots", cur, lambda c: browse.filter_choices(c)["root"])
    figures = state.replica.figures or {}
    summary.update(
        {
            k: figures.get(k, summary[k])
            for k in ("duplicate_groups", "duplicate_files", "reclaimable_bytes")
        }
    )
    if api:
        return json_response(
            {"summary": summary, "groups": page.rows, "next_cursor": page.next_cursor},
            started=started,
        )
    params = {"reviewed": reviewed} if reviewed else {}
    next_url = (
        "/duplicates?" + urlencode({**params, "cursor": page.next_cursor})
        if page.next_cursor
        else None
    )
    return render(
        request,
        "duplicates.html",
        {
            "page": page,
            "summary": summary,
            "rules": browse.KEEP_RULES,
            "roots": roots,
            "reviewed": reviewed,
            "next_url": next_url,
            "here": str(request.url.path) + ("?" + request.url.query if request.url.query else ""),
            "nav": "duplicates",
        },
        started,
    )


def api_duplicates(request: Request):
    return duplicates(request, api=True)


def _back(form: dict, **params) -> str:
    """Where a form returns to: a page of /duplicates, never another address."""
    back = form.get("back", "/duplicates")
    parts = urlsplit(back)
    if parts.scheme or parts.netloc or parts.path != "/duplicates":
        back = "/duplicates"
    query = {k: v[0] for k, v in parse_qs(parts.query).items() if k in ("cursor", "reviewed")}
    query.update({k: str(v) for k, v in params.items()})
    anchor = form.get("anchor", "")
    anchor = "#" + anchor if re.fullmatch(r"g-[0-9a-f]{32}", anchor) else ""
    return "/duplicates?" + urlencode(query) + anchor


async def duplicates_keep(request: Request):
    if not _same_origin(request):
        return _forbidden()
    form = await _form(request)
    if not form.get("file_id", "").isdigit():
        return RedirectResponse(_back(form, msg="bad"), status_code=303)
    file_id = int(form["file_id"])
    return await _review_write(request, form, lambda con: review.keep_file(con, file_id), "kept")


async def duplicates_rule(request: Request):
    if not _same_origin(request):
        return _forbidden()
    form = await _form(request)
    rule = form.get("rule", "")
    root = form.get("root") or None
    if rule not in browse.KEEP_RULES or (browse.KEEP_RULES[rule].needs_arg and not root):
        return RedirectResponse(_back(form, msg="bad"), status_code=303)
    overwrite = form.get("overwrite") == "1"
    only_unreviewed = form.get("scope") == "unreviewed"

    def action(con):
        groups = None
        if only_unreviewed:
            groups = con.execute(
                "SELECT DISTINCT d.size_bytes, d.full_hash FROM duplicates d "
                "ANTI JOIN duplicate_reviews r USING (size_bytes, full_hash)"
            ).fetchall()
        return review.apply_rule(
            con,
            rule,
            root if browse.KEEP_RULES[rule].needs_arg else None,
            groups,
            keep_manual=not overwrite,
        )

    return await _review_write(request, form, action, "rule")


async def duplicates_clear(request: Request):
    if not _same_origin(request):
        return _forbidden()
    form = await _form(request)
    size, digest = form.get("size_bytes", ""), form.get("full_hash", "")
    if not size.isdigit() or not browse.is_content_key(digest):
        return RedirectResponse(_back(form, msg="bad"), status_code=303)
    return await _review_write(
        request, form, lambda con: review.clear_review(con, int(size), digest), "cleared"
    )


async def _review_write(request: Request, form: dict, action, msg: str):
    replica = _app(request).replica
    try:
        result = await run_in_threadpool(replica.write_review, action)
    except CatalogueBusy:
        return RedirectResponse(_back(form, msg="busy"), status_code=303)
    except review.ReviewError:
        return RedirectResponse(_back(form, msg="gone"), status_code=303)
    extra = {"n": result} if msg == "rule" else {}
    return RedirectResponse(_back(form, msg=msg, **extra), status_code=303)


def duplicates_plan(request: Request):
    """The reviewed plan as a download: sh, csv or json. Dry: it only describes."""
    started = time.perf_counter()
    action = request.query_params.get("action", "remove")
    fmt = request.query_params.get("format", "sh")
    target = request.query_params.get("dir") or None
    if action not in review.PLAN_ACTIONS or fmt not in review.PLAN_FORMATS:
        return not_found(request, started, "that kind of plan")
    if action == "quarantine" and (not target or not os.path.isabs(target)):
        return render(
            request,
            "message.html",
            {
                "title": "A quarantine plan needs a folder",
                "text": "Give the absolute path of the folder the copies should be moved into.",
                "nav": "duplicates",
            },
            started,
            status_code=400,
        )
    replica = _app(request).replica
    with replica.cursor() as cur:
        if cur is None:
            return updating(request, started)
        plan = review.make_plan(cur, action, target, _app(request).catalogue.where)
    body = review.render_plan(plan, fmt)
    media = {"sh": "text/x-shellscript", "csv": "text/csv", "json": "application/json"}[fmt]
    name = f"dam-plan-{action}.{fmt}"
    return Response(
        body,
        media_type=media,
        headers=_timed(
            started,
            {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        ),
    )


# --- problems -----------------------------------------------------------------------------
def problems(request: Request, api: bool = False):
    started = time.perf_counter()
    bucket = request.query_params.get("bucket") or None
    if bucket not in _buckets(request):
        bucket = None
    with _app(request).replica.cursor() as cur:
        if cur is None:
            return updating(request, started, api)
        data = browse.problems(cur, bucket=bucket)
    if api:
        return json_response(data, started=started)
    return render(
        request,
        "problems.html",
        {"data": data, "buckets": _buckets(request), "nav": "problems"},
        started,
    )


def api_problems(request: Request):
    return problems(request, api=True)


async def problems_retry(request: Request):
    """The same backfill as `dam backfill-failed`: the failed thumbnail partitions, launched
    on the running Dagster instance through its webserver."""
    started = time.perf_counter()
    if not _same_origin(request):
        return _forbidden()
    from ..backfill import BackfillError, failed_partitions, launch_backfill

    url = _app(request).settings.dagster_url

    def launch():
        failed = failed_partitions(url, ["thumbnails_fast", "thumbnails_slow"])
        launched = []
        for asset, partitions in failed.items():
            if partitions:
                launched.append((asset, partitions, launch_backfill(url, asset, partitions)))
        return launched

    try:
        launched = await run_in_threadpool(launch)
        error = None
    except BackfillError as exc:
        launched, error = [], str(exc)
    return render(
        request,
        "retry.html",
        {"launched": launched, "error": error, "url": url, "nav": "problems"},
        started,
    )


# --- status -------------------------------------------------------------------------------
def status(request: Request, api: bool = False):
    started = time.perf_counter()
    state = _app(request)
    replica_state = state.replica.state()
    figures = state.replica.figures
    if figures is None:
        return updating(request, started, api)
    from .dagster_info import queue_figures, runs_overview

    runs = runs_overview(state.settings.dagster_home)
    queue, queue_sentence = queue_figures(state.settings.dagster_home)
    data = {
        "figures": {**figures, **queue},  # what `dam status --json` prints
        "queue": queue_sentence,
        "last_scan": state.replica.scan,
        "replica": replica_state,
        "runs": runs,
    }
    if api:
        return json_response(data, started=started)
    partial = request.query_params.get("partial") == "1"
    return render(
        request,
        "status_body.html" if partial else "status.html",
        {**data, "nav": "status"},
        started,
    )


def api_status(request: Request):
    return status(request, api=True)


def health(request: Request):
    state = _app(request).replica.state()
    return json_response({"ok": True, "replica_ready": state["ready"]})


def routes() -> list:
    return [
        Route("/", library),
        Route("/folders", folders),
        Route("/models/{file_id:int}", model),
        Route("/models/{file_id:int}/thumbnail", model_thumbnail),
        Route("/models/{file_id:int}/file", model_file),
        Route("/thumbs/{name}", thumb),
        Route("/duplicates", duplicates),
        Route("/duplicates/keep", duplicates_keep, methods=["POST"]),
        Route("/duplicates/rule", duplicates_rule, methods=["POST"]),
        Route("/duplicates/clear", duplicates_clear, methods=["POST"]),
        Route("/duplicates/plan", duplicates_plan),
        Route("/problems", problems),
        Route("/problems/retry", problems_retry, methods=["POST"]),
        Route("/status", status),
        Route("/api/models", api_library),
        Route("/api/models/{file_id:int}", api_model),
        Route("/api/folders", api_folders),
        Route("/api/duplicates", api_duplicates),
        Route("/api/problems", api_problems),
        Route("/api/status", api_status),
        Route("/healthz", health),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


__all__ = ["routes", "CatalogueError"]
