"""The library browser's routes, with Starlette's test client, on a real catalogue made by a real
`dam run` over real models with hostile names: pages, JSON, paging, escaping, thumbnails and
what may never be served, the duplicate review and its plans, and a busy catalogue."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from starlette.testclient import TestClient

from dam_dagster.core.store import Catalogue

from .conftest import BIN
from .conftest_web import HOSTILE, dam_run, make_app, make_web_library


@pytest.fixture(scope="module")
def site(tmp_path_factory, corpus):
    """One real run for the module; tests that write reviews clear them again."""
    base = tmp_path_factory.mktemp("web")
    lib = make_web_library(base / "lib", corpus)
    data = base / "data"
    dam_run(lib["roots"], data, base)
    status = subprocess.run(
        [str(BIN / "dam"), "status", "--json"],
        env={**os.environ, "DAM_DATA_DIR": str(data)},
        capture_output=True,
        text=True,
        check=True,
    )
    return {**lib, "data": data, "base": base, "status": json.loads(status.stdout)}


@pytest.fixture
def client(site):
    with TestClient(make_app(site["data"])) as c:
        yield c
    with Catalogue(site["data"]).connect() as con:
        con.execute("DELETE FROM duplicate_reviews")


def ids_in(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'class="card" href="/models/(\d+)"', html)]


# --- pages --------------------------------------------------------------------------------
def test_library_lists_every_model_with_its_badges(client, site):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert len(ids_in(page.text)) == site["status"]["models"]  # one card per model
    assert f"<strong>{site['status']['models']}</strong> 3D models" in page.text
    for badge in ("duplicate", "has copies", "failed", "embedded preview"):
        assert f">{badge}</span>" in page.text
    everything = client.get("/?kind=all").text
    assert len(ids_in(everything)) == site["status"]["files"]
    assert "notes.txt" in everything and "notes.txt" not in page.text


def test_names_are_escaped_everywhere(client):
    page = client.get("/?kind=all").text
    assert "<img src=x onerror=alert(1)>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.stl" in page
    assert "it&#39;s &#34;quoted&#34; &amp; more.stl" in page
    assert "bad \\xff\\xfe name.stl" in page  # invalid UTF-8 shown as escapes
    api = client.get("/api/models", params={"q": "onerror"}).json()
    [item] = api["items"]
    model = client.get(f"/models/{item['id']}").text
    assert "<img src=x onerror" not in model and "&lt;img src=x onerror=alert(1)&gt;" in model
    for route in ("/duplicates", "/problems", "/folders"):
        assert "<img src=x onerror" not in client.get(route).text
    csp = client.get("/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_search_filters_and_sort(client, site):
    found = client.get("/api/models", params={"q": "DUCK"}).json()
    assert {Path(i["path"]).name for i in found["items"]} == {"Duck.glb"}
    assert found["total"] == 2  # one in each root
    two_words = client.get("/api/models", params={"q": "box backup"}).json()
    assert [Path(i["path"]).name for i in two_words["items"]] == ["box copy.STL"]
    other = client.get("/api/models", params={"root": str(site["other"])}).json()
    assert [i["name"] for i in other["items"]] == ["Duck.glb"]
    folder = client.get("/api/models", params={"folder": "backup"}).json()
    assert [i["name"] for i in folder["items"]] == ["box copy.STL"]
    glb = client.get("/api/models", params={"format": "GLB"}).json()
    assert {i["extension"] for i in glb["items"]} == {".glb"}
    failed = client.get("/api/models", params={"thumbnail": "failed"}).json()
    assert {i["name"] for i in failed["items"]} == {"broken.stl", "empty.stl"}
    dups = client.get("/api/models", params={"duplicate": "duplicate"}).json()
    assert dups["total"] == site["status"]["duplicate_files"]
    by_size = client.get("/api/models", params={"sort": "size", "order": "desc"}).json()["items"]
    sizes = [i["size_bytes"] for i in by_size]
    assert sizes == sorted(sizes, reverse=True)
    bucket = client.get("/api/models", params={"bucket": "<1MB"}).json()
    assert bucket["total"] == site["status"]["models"]  # every test model is small
    # an invalid value is ignored, never an error page
    assert (
        client.get("/", params={"thumbnail": "nonsense", "sort": "x", "cursor": "!!"}).status_code
        == 200
    )


@pytest.mark.parametrize("sort,order", [("name", "asc"), ("size", "desc"), ("changed", "asc")])
def test_keyset_paging_visits_every_file_once_in_order(client, site, sort, order):
    seen, cursor = [], None
    while True:
        params = {"kind": "all", "sort": sort, "order": order, "limit": 4}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/models", params=params).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    whole = client.get(
        "/api/models", params={"kind": "all", "sort": sort, "order": order, "limit": 500}
    ).json()
    assert [i["id"] for i in seen] == [i["id"] for i in whole["items"]]
    assert len({i["id"] for i in seen}) == site["status"]["files"]
    # the HTML next-page link carries the same cursor (infinite scroll fetches it)
    html = client.get("/", params={"kind": "all", "limit": 4}).text
    next_url = re.search(r'class="more" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert parse_qs(urlsplit(next_url).query)["cursor"]
    partial = client.get(next_url + "&partial=1&limit=4").text
    assert "<html" not in partial and len(ids_in(partial)) == 4


def test_model_page_shows_everything_about_a_file(client, site):
    [item] = client.get("/api/models", params={"q": "box copy"}).json()["items"]
    page = client.get(f"/models/{item['id']}").text
    detail = client.get(f"/api/models/{item['id']}").json()
    assert str(site["main"] / "backup" / "2024" / "box copy.STL") in page
    assert detail["full_hash"] in page and detail["partial_hash"] in page
    assert "rendered" in page and "thumbnails_fast" in page  # render source, Dagster link
    assert len(detail["group"]) == 2 and all(m["thumb_key"] for m in detail["group"])
    broken = client.get("/api/models", params={"q": "broken"}).json()["items"][0]
    text = client.get(f"/models/{broken['id']}").text
    assert "failed" in text and broken["error_class"] and broken["error_class"] in text
    assert client.get("/models/999999").status_code == 404
    assert client.get("/api/models/999999").status_code == 404


# --- geometry facts and "same model, different file" ----------------------------------------
def _names(client, **params) -> set[str]:
    data = client.get("/api/models", params={"limit": 500, **params}).json()
    return {Path(i["path"]).name for i in data["items"]}


def _dam_find(site, *args) -> set[str]:
    proc = subprocess.run(
        [str(BIN / "dam"), "find", *args, "--format", "json"],
        env={**os.environ, "DAM_DATA_DIR": str(site["data"])},
        capture_output=True,
        text=True,
        check=True,
    )
    return {Path(r["path"]).name for r in json.loads(proc.stdout)}


def test_geometry_filters_say_what_dam_find_says(client, site):
    every = _names(client)
    small = _names(client, max_x=180, watertight="yes")
    # Duck.glb is 1.65 m across (glTF is in metres), counterX.3MF 305 mm; featuretype is open
    assert "Duck.glb" in every and "counterX.3MF" in every and "featuretype.3MF" in every
    assert not {"Duck.glb", "counterX.3MF", "featuretype.3MF", "broken.stl"} & small
    assert {"box.STL", "box.obj", "torus.stl"} <= small
    assert small == _dam_find(site, "--max-x", "180", "--watertight")
    mk4 = _names(client, fits="Prusa MK4")
    assert mk4 == _dam_find(site, "--fits", "Prusa MK4")
    assert "counterX.3MF" not in mk4 and "counterX.3MF" in _names(client, fits="Prusa XL")
    assert _names(client, watertight="no") == {"featuretype.3MF"}
    inches = _names(client, probably_inches="yes")
    assert "box.STL" in inches and not {"featuretype.3MF", "Duck.glb"} & inches  # it says inch
    low = client.get("/api/models", params={"max_z": 2, "limit": 500}).json()["items"]
    assert "torus.stl" in {i["name"] for i in low} and "box.STL" not in {i["name"] for i in low}
    assert all(i["size_z_mm"] <= 2 for i in low)  # the torus is 1 mm tall, the box 3.75
    assert _names(client, similar="yes") == {"box.STL", "box copy.STL", "box.obj"}
    assert not _names(client, similar="no") & {"box.STL", "box.obj"}
    # nonsense is ignored (every model), never an error page
    assert _names(client, max_x="abc", fits="") == every
    assert client.get("/api/models", params={"fits": "No Such Printer"}).json()["total"] == 0
    form = client.get("/", params={"max_x": "180", "fits": "Prusa MK4"}).text
    assert 'name="max_x"' in form and 'value="180"' in form
    assert re.search(r'<option value="Prusa MK4" selected>Prusa MK4 \(\d+\)</option>', form)
    cards = client.get("/").text
    assert cards.count(">same model elsewhere</span>") == 3


def test_facts_sorts_page_with_unmeasured_models_last(client, site):
    column = {"triangles": "triangles", "volume": "volume_mm3", "largest": "size"}
    for sort in ("triangles", "volume", "largest"):
        for order in ("asc", "desc"):
            seen, cursor = [], None
            while True:
                params = {"sort": sort, "order": order, "limit": 3}
                page = client.get("/api/models", params={**params, "cursor": cursor or ""})
                seen += page.json()["items"]
                cursor = page.json()["next_cursor"]
                if not cursor:
                    break
            assert len({i["id"] for i in seen}) == len(seen) == site["status"]["models"]
            if sort == "largest":
                values = [
                    None if i["size_x_mm"] is None else max(i[f"size_{a}_mm"] for a in "xyz")
                    for i in seen
                ]
            else:
                values = [i[column[sort]] for i in seen]
            measured = [v for v in values if v is not None]
            assert measured == sorted(measured, reverse=order == "desc"), (sort, order)
            assert values[: len(measured)] == measured  # unmeasured (NULL) come last
            assert len(measured) < len(values)  # broken.stl, empty.stl, the G-code
            nulls = [i["id"] for i in seen[len(measured) :]]
            assert nulls == sorted(nulls, reverse=order == "desc")


def test_model_page_shows_geometry_and_the_same_model_in_other_files(client, site, corpus):
    import trimesh

    from dam_dagster.web.app import number

    ids = {
        i["name"]: i["id"] for i in client.get("/api/models", params={"q": "box"}).json()["items"]
    }
    assert set(ids) == {"box.STL", "box copy.STL", "box.obj"}
    first = min(ids.values())  # the first catalogued of the two identical STLs
    detail = client.get(f"/api/models/{first}").json()
    extents = trimesh.load(corpus / "box.STL").extents  # measured independently
    got = [detail[f"size_{a}_mm"] for a in "xyz"]
    assert got == pytest.approx(list(extents), rel=1e-5)
    assert detail["watertight"] and detail["probably_inches"] and detail["volume_mm3"] > 0
    page = client.get(f"/models/{first}").text
    assert '<h2 id="geometry">Geometry</h2>' in page
    assert f"<dt>triangles</dt><dd>{detail['triangles']:,}</dd>" in page
    size = " × ".join(number(v) for v in got) + " mm"
    assert size == "7.25 × 4.5 × 3.75 mm"
    assert re.search(r'data-fact="size">' + re.escape(size), page)
    assert '<dd data-fact="watertight">yes</dd>' in page and 'data-fact="inches"' in page
    assert ">Prusa MINI</a>" in page  # fits_printers, linked to the library filter
    # the other two files of its mesh: the identical STL and the OBJ
    others = {m["name"]: m for m in detail["similar"]}
    other_stl = "box.STL" if ids["box copy.STL"] == first else "box copy.STL"
    assert set(others) == {other_stl, "box.obj"}
    assert others[other_stl]["identical_to"] == [first] and others["box.obj"]["identical_to"] == []
    assert all(m["thumb_key"] for m in others.values())
    section = page[page.index('id="similar"') :]
    assert "Same model, different file (2 others)" in section
    for m in others.values():
        assert f'data-id="{m["id"]}"' in section and f"/thumbs/{m['thumb_key']}.png" in section
    assert section.count(">same bytes as this file</span>") == 1
    # from the OBJ: the two STLs, which are exact duplicates of each other
    obj = client.get(f"/api/models/{ids['box.obj']}").json()["similar"]
    assert {m["id"]: m["identical_to"] for m in obj} == {
        first: [max(ids[n] for n in ("box.STL", "box copy.STL"))],
        max(ids[n] for n in ("box.STL", "box copy.STL")): [first],
    }
    assert f">same bytes as file {first}</span>" in client.get(f"/models/{ids['box.obj']}").text
    # a plain duplicate (same bytes only) has no such section
    [torus] = client.get("/api/models", params={"q": "torus.stl", "folder": "models"}).json()[
        "items"
    ]
    assert 'id="similar"' not in client.get(f"/models/{torus['id']}").text
    # a sliced G-code: no mesh, its print facts
    [gcode] = client.get("/api/models", params={"q": "bracket.gcode"}).json()["items"]
    text = client.get(f"/models/{gcode['id']}").text
    assert '<h2 id="print">Print</h2>' in text
    for fact in ("PrusaSlicer 2.8.1", "MK4S", "0.40 mm", "PLA", "PETG", "#FF8000", "1 h 2 min"):
        assert fact in text, fact
    assert "<dd>12.3 g</dd>" in text and "Bracket" in text


def test_folders_count_the_tree(client, site):
    roots = client.get("/api/folders").json()["children"]
    assert {r["root"]: r["files"] for r in roots} == {
        str(site["main"]): site["status"]["files"] - 1,
        str(site["other"]): 1,
    }
    odd = client.get(
        "/api/folders", params={"root": str(site["main"]), "folder": "odd names"}
    ).json()
    assert odd["here"]["files"] == len(HOSTILE) + 1
    top = client.get("/folders", params={"root": str(site["main"])}).text
    assert "backup" in top and "odd names" in top
    assert client.get("/folders", params={"root": "/nowhere"}).status_code == 404


def test_status_page_shows_the_figures_of_dam_status(client, site):
    api = client.get("/api/status").json()
    assert api["figures"] == site["status"]  # the run queue's figures included
    assert "runs in progress" in api["queue"]
    assert api["last_scan"]["files_seen"] == site["status"]["files"]
    page = client.get("/status").text
    for key, value in site["status"].items():
        if key not in ("bytes", "reclaimable_bytes") and value is not None:
            assert re.search(rf'data-key="{key}"><th>[^<]+</th><td class="n">{value:,}<', page), key
    assert "dedup" in page  # the run `dam run` recorded in the Dagster instance


def test_problems_group_failures_and_list_the_rest(client):
    data = client.get("/api/problems").json()
    assert data["render_failed_files"] == 2
    assert sum(g["files"] for g in data["render_failures"]) == 2
    assert all(g["examples"] for g in data["render_failures"])
    assert [e["path"] for e in data["empty_files"]][0].endswith("misc/empty.stl")
    assert any(w["kind"] == "undecodable_name" for w in data["walk_issues"])
    page = client.get("/problems").text
    assert "Retry the failed partitions" not in page  # nothing transient to retry
    # the summary counts in words: 2 files failed, 1 empty file (not "1 empty files")
    summary = page.split('<p class="summary">', 1)[1].split("</p>", 1)[0]
    assert "<strong>2</strong> files failed to render" in summary, summary
    empty = len(data["empty_files"])
    assert f"<strong>{empty}</strong> {'empty file' if empty == 1 else 'empty files'} ·" in summary


# --- thumbnails and files: only by key or id ----------------------------------------------
def test_thumbnails_are_served_by_content_key_with_immutable_caching(client):
    [item] = client.get("/api/models", params={"q": "torus.stl", "folder": "models"}).json()[
        "items"
    ]
    png = client.get(f"/thumbs/{item['thumb_key']}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.headers["cache-control"] == "public, max-age=31536000, immutable"
    redirect = client.get(f"/models/{item['id']}/thumbnail", follow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["location"] == f"/thumbs/{item['thumb_key']}.png"
    assert "immutable" not in redirect.headers["cache-control"]


@pytest.mark.parametrize(
    "url",
    [
        "/thumbs/../dam.duckdb",
        "/thumbs/..%2Fdam.duckdb",
        "/thumbs/..%2F..%2F..%2Fetc%2Fpasswd",
        "/thumbs/%2Fetc%2Fpasswd",
        "/thumbs//etc/passwd",
        "/thumbs/ABCDEF0123456789ABCDEF0123456789.png",
        "/thumbs/0123456789abcdef0123456789abcdef.png.bak",
        "/thumbs/0123456789abcdef0123456789abcdef.png",  # well-formed, but no such file
        "/static/../dam.duckdb",
        "/static/..%2F..%2Fcore%2Fstore.py",
        "/static/%2Fetc%2Fpasswd",
        "/models/..%2F..%2Fetc%2Fpasswd/file",
        "/models/%2Fetc%2Fpasswd/file",
        "/models/-1/file",
        "/models/1/file/../../../../etc/passwd",
        "/duplicates/plan?action=remove&format=../../etc/passwd",
    ],
)
def test_no_path_from_a_request_reaches_the_filesystem(client, url):
    response = client.get(url)
    assert response.status_code in (400, 404), response.status_code
    assert b"root:" not in response.content and b"DUCK" not in response.content[:8]
    assert b"import duckdb" not in response.content


def test_a_model_file_is_downloaded_by_catalogue_id(client, site):
    [item] = client.get("/api/models", params={"q": "bad"}).json()["items"]
    got = client.get(f"/models/{item['id']}/file")
    assert got.status_code == 200
    # the name is not valid UTF-8: the catalogue's exact bytes find the file
    assert "\\xff" in item["path"]
    assert got.content == (site["main"] / "models" / "torus.stl").read_bytes()
    assert got.headers["content-disposition"].startswith("attachment")


# --- duplicates, review and plans ---------------------------------------------------------
def _group_of(client, name: str) -> dict:
    for g in client.get("/api/duplicates").json()["groups"]:
        if any(m["name"] == name for m in g["members"]):
            return g
    raise AssertionError(name)


def test_duplicates_page_sorted_by_reclaimable_bytes(client, site):
    data = client.get("/api/duplicates").json()
    assert data["summary"]["duplicate_groups"] == site["status"]["duplicate_groups"]
    assert data["summary"]["duplicate_files"] == site["status"]["duplicate_files"]
    reclaim = [g["reclaimable_bytes"] for g in data["groups"]]
    assert reclaim == sorted(reclaim, reverse=True)
    big = data["groups"][0]
    assert big["files"] == len(HOSTILE) + 2 and big["keep_file_id"] is None
    assert big["keep_id"] == min(m["id"] for m in big["members"])  # the default: lowest id
    page = client.get("/duplicates").text
    assert page.count("Keep this one") == sum(g["files"] - 1 for g in data["groups"])


def test_keep_choice_is_recorded_in_the_catalogue_not_the_library(client, site):
    before = sorted(p for p in site["main"].rglob("*"))
    group = _group_of(client, "with space.stl")
    chosen = next(m for m in group["members"] if m["name"] == "with space.stl")
    done = client.post(
        "/duplicates/keep",
        data={"file_id": chosen["id"], "back": "/duplicates", "anchor": f"g-{group['full_hash']}"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and "msg=kept" in done.headers["location"]
    with Catalogue(site["data"]).connect(write=False) as con:
        rows = con.execute("SELECT keep_file_id, rule FROM duplicate_reviews").fetchall()
    assert rows == [(chosen["id"], "manual")]
    after = _group_of(client, "with space.stl")  # the page shows it at once
    assert after["keep_file_id"] == chosen["id"] and after["keep_valid"]
    assert sorted(p for p in site["main"].rglob("*")) == before
    # a POST from another site is refused and writes nothing
    other = client.post(
        "/duplicates/keep",
        data={"file_id": group["members"][0]["id"]},
        headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        follow_redirects=False,
    )
    assert other.status_code == 403
    assert _group_of(client, "with space.stl")["keep_file_id"] == chosen["id"]
    # a file that is not a member of any group cannot be "kept"
    [lonely] = client.get("/api/models", params={"q": "featuretype"}).json()["items"]
    refused = client.post(
        "/duplicates/keep", data={"file_id": lonely["id"]}, follow_redirects=False
    )
    assert "msg=gone" in refused.headers["location"]


def test_keep_rules(client, site):
    rule = lambda **form: client.post("/duplicates/rule", data=form, follow_redirects=False)  # noqa: E731
    assert "n=3" in rule(rule="shortest_path", scope="all").headers["location"]
    g = _group_of(client, "with space.stl")
    paths = {m["id"]: m["path"] for m in g["members"]}
    assert g["keep_file_id"] == min(paths, key=lambda i: (len(paths[i]), i))
    rule(rule="prefer_root", root=str(site["other"]), scope="all")
    duck = _group_of(client, "Duck.glb")
    assert next(m for m in duck["members"] if m["id"] == duck["keep_file_id"])["root"] == str(
        site["other"]
    )
    assert _group_of(client, "with space.stl")["rule"] == "prefer_root"  # no copy there: lowest id
    # a choice made by hand stays unless asked
    box = _group_of(client, "box.STL")
    copy = max(m["id"] for m in box["members"])
    client.post("/duplicates/keep", data={"file_id": copy})
    rule(rule="lowest_id", scope="all")
    assert _group_of(client, "box.STL")["keep_file_id"] == copy
    rule(rule="lowest_id", scope="all", overwrite="1")
    assert _group_of(client, "box.STL")["keep_file_id"] == min(m["id"] for m in box["members"])
    assert "msg=bad" in rule(rule="prefer_root", scope="all").headers["location"]  # needs a root


def test_plan_downloads_cover_only_reviewed_groups(client, site):
    empty = client.get("/duplicates/plan", params={"action": "remove", "format": "json"}).json()
    assert empty["copies"] == 0 and "dry plan" in empty["note"].lower()
    box = _group_of(client, "box.STL")
    client.post("/duplicates/keep", data={"file_id": box["members"][0]["id"]})
    sh = client.get("/duplicates/plan", params={"action": "remove", "format": "sh"})
    assert sh.headers["content-disposition"] == 'attachment; filename="dam-plan-remove.sh"'
    assert b"DRY PLAN" in sh.content and sh.content.count(b"rm -- ") == 1
    assert b"box copy.STL" in sh.content and b"torus" not in sh.content
    csv_text = client.get("/duplicates/plan", params={"action": "hardlink", "format": "csv"}).text
    assert csv_text.startswith("# dam duplicates plan (hardlink): a dry plan")
    assert len(csv_text.strip().splitlines()) == 3  # note, header, one copy
    q = client.get("/duplicates/plan", params={"action": "quarantine", "format": "sh"})
    assert q.status_code == 400 and "needs a folder" in q.text
    # the same plan from the terminal
    cli = subprocess.run(
        [str(BIN / "dam"), "duplicates", "--plan", "remove"],
        env={**os.environ, "DAM_DATA_DIR": str(site["data"])},
        capture_output=True,
    )
    assert cli.returncode == 0 and b"a dry remove plan of 1 reviewed groups" in cli.stderr
    strip = lambda b: [line for line in b.splitlines() if not line.startswith(b"# Made")]  # noqa: E731
    assert strip(cli.stdout) == strip(sh.content)


# --- the catalogue is busy ----------------------------------------------------------------
def _hold_lock(data: Path, seconds: float, touch: bool) -> subprocess.Popen:
    """Another process holding the catalogue's lock, as a long write does: for `seconds`, or
    until `_release` says so (a test that must know the lock is still held when it acts)."""
    code = f"""
import os, select, sys
from dam_dagster.core.store import _FileLock, _Waiting
lock = _FileLock(__import__('pathlib').Path({str(data / "dam.duckdb.lock")!r}))
lock.acquire(10, _Waiting(None), 'a test inventory')
if {touch!r}:
    os.utime({str(data / "dam.duckdb")!r})  # the write has begun: the file changed
print('holding', flush=True)
select.select([sys.stdin], [], [], {seconds})
lock.release()
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def _release(holder: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        holder.stdin.close()  # the holder's select returns: it lets go
    holder.wait(timeout=20)


def _get_within(client, url, seconds: float):
    """A GET that must answer (it may not wait for the lock); fails if it hangs."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", client.get(url)))
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{url} hung while the catalogue was busy"
    return result["r"]


def test_the_copy_under_the_lock_runs_at_normal_priority(site, tmp_path, monkeypatch):
    """The browser's refresh copies the catalogue under its lock, then builds its tables. Only
    the build runs at nice +10: a copy at +10 on a machine busy rendering could hold the lock
    for long (writers waiting behind it, the page saying "being updated" meanwhile)."""
    from dam_dagster.core import replica as replica_module
    from dam_dagster.core.thumbnails import size_buckets

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = priority()
    if base != 0:
        pytest.skip(f"the tests run at nice {base}: the comparison needs nice 0")
    copies, builds = [], []
    real_copy, real_build = Catalogue.copy_to, replica_module.build_browse_tables

    def copy_to(self, dest, timeout_s=0.0):
        copies.append(priority())
        return real_copy(self, dest, timeout_s)

    def build(con, buckets):
        builds.append(priority())
        return real_build(con, buckets)

    monkeypatch.setattr(Catalogue, "copy_to", copy_to)
    monkeypatch.setattr(replica_module, "build_browse_tables", build)
    rep = replica_module.Replica(
        Catalogue(site["data"]), tmp_path / "browser", size_buckets(30), poll_s=0.1
    )
    rep.start()
    try:
        os.utime(site["data"] / "dam.duckdb")  # a write: the refresh thread copies again
        deadline = time.monotonic() + 30
        while rep.refreshes < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rep.refreshes >= 2, rep.last_error
    finally:
        rep.stop()
    assert copies and set(copies) == {0}  # the start's copy and the refresh thread's
    assert builds and set(builds) == {10}


def test_a_busy_catalogue_never_hangs_a_page(site):
    with TestClient(make_app(site["data"], poll_s=0.1)) as client:
        holder = _hold_lock(site["data"], 60, touch=True)  # held until _release below
        try:
            for url in ("/", "/duplicates", "/problems", "/status", "/api/models"):
                response = _get_within(client, url, 5)
                assert response.status_code == 200
            # pages look at the catalogue at most a second ago (Replica.state): the banner
            # comes within that second of the write starting
            page = _get_within(client, "/", 5).text
            deadline = time.monotonic() + 5
            while "being updated" not in page and time.monotonic() < deadline:
                time.sleep(0.2)
                page = _get_within(client, "/", 5).text
            assert "The catalogue is being updated" in page and "a test inventory" in page
            assert len(ids_in(page)) == site["status"]["models"]  # the data before the write
            box = _group_of(client, "box.STL")
            saved = client.post(
                "/duplicates/keep",
                data={"file_id": box["members"][0]["id"]},
                follow_redirects=False,
            )
            assert "msg=busy" in saved.headers["location"]  # not saved, said plainly
        finally:
            _release(holder)
        deadline = time.monotonic() + 20
        while "being updated" in client.get("/").text and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "being updated" not in client.get("/").text, client.get("/healthz").json()


def test_no_copy_yet_says_so_and_retries(site, tmp_path):
    holder = _hold_lock(site["data"], 4, touch=False)
    try:
        with TestClient(make_app(site["data"], poll_s=0.2)) as client:
            page = _get_within(client, "/", 5)
            assert page.status_code == 200 and "The catalogue is being updated" in page.text
            assert '<meta http-equiv="refresh"' in page.text
            api = client.get("/api/models")
            assert api.status_code == 503 and api.headers["retry-after"] == "2"
            holder.wait(timeout=20)
            deadline = time.monotonic() + 10
            while client.get("/api/models").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get("/api/models").status_code == 200
    finally:
        holder.wait(timeout=20)
    with TestClient(make_app(tmp_path / "nothing")) as client:
        page = client.get("/")
        assert page.status_code == 200 and "No catalogue yet" in page.text
    assert not (tmp_path / "nothing" / "dam.duckdb").exists()  # the browser creates none


def test_new_data_shows_after_a_write(site, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(site["data"], data, ignore=shutil.ignore_patterns("browser", "*.lock"))
    with TestClient(make_app(data, poll_s=0.1)) as client:
        first = client.get("/api/status").json()["replica"]["generation"]
        with Catalogue(data).connect() as con:
            con.execute("DELETE FROM walk_issues")
        deadline = time.monotonic() + 10
        while (
            client.get("/api/status").json()["figures"]["walk_issues"]
            and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        state = client.get("/api/status").json()
        assert state["figures"]["walk_issues"] == 0 and state["replica"]["generation"] > first


def test_binds_to_loopback_and_refuses_other_host_names(client, monkeypatch):
    from dam_dagster.web.app import Settings

    assert Settings.from_env().host == "127.0.0.1"  # unless DAM_BROWSER_HOST says otherwise
    monkeypatch.setenv("DAM_BROWSER_HOST", "0.0.0.0")
    assert Settings.from_env().host == "0.0.0.0"
    # a page asked for under another name (DNS rebinding) is refused
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/", headers={"Host": "127.0.0.1:3001"}).status_code == 200
