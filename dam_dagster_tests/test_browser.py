"""The library browser in a real browser (Debian's chromium, driven by Selenium) against a real
`dam serve` on a real catalogue: open the Library, search, open a Model, choose which copy to
keep in Duplicates and download the plan; every thumbnail image on each page must load."""

from __future__ import annotations

import time

import pytest

from .conftest_web import ALL_IMAGES_LOADED, Server, chromium, dam_run, make_web_library

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory, corpus):
    base = tmp_path_factory.mktemp("browser")
    lib = make_web_library(base / "lib", corpus)
    dam_run(lib["roots"], base / "data", base)
    srv = Server(base / "data", base)
    yield {"server": srv, "base": base, **lib}
    srv.stop()


@pytest.fixture
def browser(tmp_path):
    driver, why = chromium(tmp_path / "downloads", tmp_path / "profile")
    if driver is None:
        pytest.skip(why)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 15, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def assert_images_loaded(driver) -> int:
    """Scroll through the page (thumbnails load lazily), then every <img> must have pixels."""
    height = driver.execute_script("return document.body.scrollHeight")
    for y in range(0, height + 900, 600):
        driver.execute_script(f"window.scrollTo(0, {y})")
        time.sleep(0.05)

    def settled():
        images = driver.execute_script(ALL_IMAGES_LOADED)
        return images if all(done for _src, done, _w in images) else None

    images = wait_for(settled, what="the images to load")
    broken = [src for src, _done, width in images if width == 0]
    assert not broken, f"images that did not load: {broken}"
    return len(images)


def test_library_search_model_keep_and_plan(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url = server["server"].url
    browser.get(url + "/")
    cards = browser.find_elements(By.CSS_SELECTOR, ".grid .card")
    assert len(cards) == 18  # every model of the test library
    assert assert_images_loaded(browser) == 16  # the two failed models have none
    assert browser.find_elements(By.XPATH, "//span[@class='badge emb']")  # embedded preview
    # no hostile name ran as markup: the only <img> elements are thumbnails
    assert all(
        "/thumbs/" in img.get_attribute("src") for img in browser.find_elements(By.TAG_NAME, "img")
    )

    # "/" jumps to the search box; search by name
    browser.find_element(By.TAG_NAME, "body").send_keys("/")
    search = browser.switch_to.active_element
    assert search.get_attribute("name") == "q"
    search.send_keys("box", Keys.ENTER)
    wait_for(lambda: "q=box" in browser.current_url, what="the search")
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".card .name")]
    assert sorted(names) == ["box copy.STL", "box.STL", "box.obj"]
    assert_images_loaded(browser)

    # open a model with the keyboard: arrow to the first card, Enter
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(lambda: "/models/" in browser.current_url, what="the model page")
    assert browser.find_element(By.TAG_NAME, "h1").text in ("box copy.STL", "box.STL")
    assert "Identical files (2)" in browser.page_source
    # its geometry, and the same mesh in the other STL and in the OBJ
    geometry = browser.find_element(By.CSS_SELECTOR, "dl.geometry")
    assert geometry.is_displayed() and "7.25 × 4.5 × 3.75 mm" in geometry.text
    similar = browser.find_element(By.ID, "similar")
    assert "Same model, different file (2 others)" in similar.text
    assert "box.obj" in similar.text and "same bytes as this file" in similar.text
    assert assert_images_loaded(browser) == 5  # the large one, both identical, both similar

    # Duplicates: keep the other copy of the box pair
    browser.get(url + "/duplicates")
    assert_images_loaded(browser)
    group = next(
        g for g in browser.find_elements(By.CSS_SELECTOR, ".dgroup") if "box copy.STL" in g.text
    )
    gid = group.get_attribute("id")
    copy = group.find_element(By.CSS_SELECTOR, ".member.copy")
    copy_id = copy.get_attribute("data-id")
    keep = copy.find_element(By.CSS_SELECTOR, "button.keep")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", keep)
    keep.click()
    wait_for(lambda: "msg=kept" in browser.current_url, what="the choice to be saved")
    assert "Saved: that copy is kept" in browser.page_source
    group = browser.find_element(By.ID, gid)
    kept = group.find_element(By.CSS_SELECTOR, ".member.kept")
    assert kept.get_attribute("data-id") == copy_id and "kept" in kept.text

    # download the plan as a shell script
    button = browser.find_element(By.ID, "plan-download")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()
    downloads = tmp_path / "downloads"
    plan = wait_for(
        lambda: next((p for p in downloads.glob("dam-plan-remove.sh")), None),
        what="the download",
    )
    text = wait_for(lambda: plan.read_bytes() if plan.stat().st_size else None, what="the file")
    assert b"THIS IS A DRY PLAN" in text and text.count(b"rm -- ") == 1
    kept_path = kept.find_element(By.CSS_SELECTOR, ".mpath").text
    assert kept_path.encode() in text
    assert f"rm -- {kept_path!s}".encode() not in text


def test_infinite_scroll_and_every_page(server, browser):
    from selenium.webdriver.common.by import By

    url = server["server"].url
    import requests

    first = requests.get(url + "/?kind=all&limit=5", timeout=10).text
    assert first.count('class="card"') == 5  # the server sends one page of five
    browser.get(url + "/?kind=all&limit=5")
    for _ in range(6):  # each scroll to the bottom fetches the next page
        browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        time.sleep(0.4)
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, ".grid .card")) == 19,
        what="every file through infinite scroll",
    )
    ids = [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, ".card")]
    assert len(set(ids)) == 19
    assert_images_loaded(browser)
    for path in ("/folders", "/problems", "/status"):
        browser.get(url + path)
        assert browser.find_element(By.TAG_NAME, "main").text.strip()
        logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
        assert not [entry for entry in logs if entry["level"] == "SEVERE"], logs
