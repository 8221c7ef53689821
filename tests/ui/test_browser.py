"""The web interface in a real browser: Debian's chromium, headless, driven through
chromium-driver by selenium, against a real `moorage serve` (tests/harness.py) holding images
pushed through the API.

Browse, search as you type, open an index and an image's layer history, sign in, see a
forbidden repository stay hidden, delete a tag through its confirmation page, and move by
keyboard alone. Screenshots of the main pages are taken on the way: into docs/ui/ when
UI_SCREENSHOTS=1 (how the committed ones are made), else into the test's directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from moorage.auth import htpasswd
from tests.auth.helpers import manifest_for
from tests.harness import REPO_ROOT, MoorageProcess
from tests.ui.helpers import RULES, USERS, Pushed, basic, push_samples

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 10.0
DOCS = REPO_ROOT / "docs" / "ui"


@dataclass
class Site:
    server: MoorageProcess
    pushed: Pushed
    shots: Path

    @property
    def url(self) -> str:
        return self.server.url


async def _push(base: str, layout: Path) -> Pushed:
    async with aiohttp.ClientSession(base_url=base) as http:
        pushed = await push_samples(http, layout / "a", "team/app", basic("root"))
        await push_samples(http, layout / "b", "secret/vault", basic("root"), seed=20)
        # Enough small repositories for a second page of the list.
        config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes"
        for n in range(55):
            repo = f"team/service-{n:02d}"
            for data in (config, layer):
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                url = f"/v2/{repo}/blobs/uploads/?digest={digest}"
                async with http.post(url, data=data, headers=basic("root")) as resp:
                    assert resp.status == 201, await resp.text()
            headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
            async with http.put(
                f"/v2/{repo}/manifests/latest",
                data=manifest_for(config, layer),
                headers={**headers, **basic("root")},
            ) as resp:
                assert resp.status == 201, await resp.text()
        # Pulls for the storage page's activity: the image's manifest, its layers.
        image = pushed.image
        for _ in range(3):
            url = f"/v2/team/app/manifests/{image.digest}"
            async with http.get(url, headers=basic("root")) as resp:
                assert resp.status == 200
        for layer in image.layers:
            async with http.get(
                f"/v2/team/app/blobs/{layer.digest}", headers=basic("root")
            ) as resp:
                assert await resp.read() == layer.read()
        return pushed


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("ui-browser")
    users = root / "htpasswd"
    htpasswd.write(users, {u: htpasswd.hash_password(p) for u, p in USERS.items()})
    config = {"auth": {"mode": "basic", "htpasswd": str(users), "rules": RULES, "admins": ["root"]}}
    server = MoorageProcess(root / "data", root / "logs", config=config, ready=(401,))
    try:
        server.start_sync()
        pushed = asyncio.run(_push(server.url, root / "layouts"))
        # A dry-run collection for the storage page's list of cycles, and a restart, which
        # writes the server's push and pull counts (else written once a minute).
        subprocess.run(
            [sys.executable, "-m", "moorage", "gc", "--dry-run", "--data-dir", server.data_dir],
            check=True,
            env=server.environment(),
            capture_output=True,
            timeout=60,
        )
        assert server.stop_sync() == 0
        server.start_sync()
        shots = DOCS if os.environ.get("UI_SCREENSHOTS") == "1" else root / "shots"
        shots.mkdir(parents=True, exist_ok=True)
        yield Site(server, pushed, shots)
    finally:
        server.cleanup()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    # A missing browser fails the test: scripts/install-test-deps.sh installs both.
    assert shutil.which(CHROMIUM), "chromium missing: apt-get install chromium"
    assert shutil.which(CHROMEDRIVER), "chromedriver missing: apt-get install chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT)


def sign_in(driver: WebDriver, site: Site, user: str) -> None:
    driver.get(site.url + "/signin")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(USERS[user], Keys.ENTER)
    wait(driver).until(ec.text_to_be_present_in_element((By.TAG_NAME, "header"), user))


def console_errors(driver: WebDriver) -> list[str]:
    """What the page's console reported as errors (a CSP violation would show here)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_browse_search_index_and_history(browser: WebDriver, site: Site) -> None:
    sign_in(browser, site, "root")
    browser.get(site.url + "/")
    assert browser.find_element(By.LINK_TEXT, "secret/vault")
    browser.save_screenshot(str(site.shots / "repositories.png"))
    # The list is paginated: 57 repositories, 50 a page.
    browser.find_element(By.LINK_TEXT, "Next page").click()
    wait(browser).until(ec.presence_of_element_located((By.LINK_TEXT, "team/service-54")))

    # Search as you type: the list narrows without a submit, and the URL follows.
    browser.get(site.url + "/")
    browser.find_element(By.ID, "q").send_keys("vau")
    wait(browser).until(ec.invisibility_of_element_located((By.LINK_TEXT, "team/app")))
    assert browser.find_element(By.LINK_TEXT, "secret/vault")
    assert browser.current_url.endswith("/?q=vau")

    browser.get(site.url + "/")
    browser.find_element(By.LINK_TEXT, "team/app").click()
    wait(browser).until(ec.title_contains("team/app"))
    rows = browser.find_element(By.CSS_SELECTOR, "table.list tbody").text
    assert "linux/amd64, linux/arm64" in rows and "OCI index" in rows
    browser.save_screenshot(str(site.shots / "repository.png"))

    browser.find_element(By.LINK_TEXT, "multi").click()
    platforms = wait(browser).until(ec.visibility_of_element_located((By.ID, "platforms-h")))
    assert platforms.text == "Platforms"
    table = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=platforms-h] table")
    assert "linux/arm64" in table.text
    browser.save_screenshot(str(site.shots / "index.png"))
    table.find_elements(By.TAG_NAME, "a")[0].click()
    wait(browser).until(ec.visibility_of_element_located((By.ID, "history-h")))
    history = browser.find_element(By.CSS_SELECTOR, "table.history").text
    assert "tests.images layer 0" in history

    browser.get(f"{site.url}/repositories/team/app/manifests/{site.pushed.image.digest}")
    referrers = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=referrers-h]")
    assert "application/vnd.moorage.test.artifact" in referrers.text
    labels = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=labels-h]").text
    assert "<script>alert(1)</script>" in labels  # shown as text, never run
    browser.save_screenshot(str(site.shots / "manifest.png"))

    browser.get(site.url + "/storage")
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "secret" in main
    namespaces = browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=usage-h]").text
    # 5 + 55 manifests pushed into team, 3 of them pulled, with two layers' bytes
    assert "team 56 11 41.8 KiB 41.8 KiB - 60 3 20.0 KiB" in namespaces, namespaces
    assert "dry run" in browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=gc-h]").text
    browser.save_screenshot(str(site.shots / "storage.png"))
    assert console_errors(browser) == []


def test_forbidden_repository_stays_hidden(browser: WebDriver, site: Site) -> None:
    browser.get(site.url + "/")
    assert "team/app" not in browser.find_element(By.TAG_NAME, "main").text
    sign_in(browser, site, "bob")
    browser.get(site.url + "/")
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "team/app" in main and "secret/vault" not in main
    browser.find_element(By.ID, "q").send_keys("secret")
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "results"), "No repository"))
    browser.get(site.url + "/repositories/secret/vault")
    assert "No such repository" in browser.find_element(By.TAG_NAME, "main").text
    browser.get(site.url + "/repositories/team/app")
    assert not browser.find_elements(By.LINK_TEXT, "Delete")  # bob only pulls


def test_sign_in_and_delete_a_tag(browser: WebDriver, site: Site) -> None:
    sign_in(browser, site, "alice")
    browser.get(site.url + "/repositories/team/service-00")
    browser.find_element(By.LINK_TEXT, "Delete").click()
    consequences = wait(browser).until(
        ec.visibility_of_element_located((By.CLASS_NAME, "consequences"))
    )
    assert "The tag latest of team/service-00 is deleted" in consequences.text
    browser.save_screenshot(str(site.shots / "delete.png"))
    browser.find_element(By.CSS_SELECTOR, "button.danger").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.TAG_NAME, "main"), "Deleted latest"))
    assert "No tags." in browser.find_element(By.TAG_NAME, "main").text
    browser.find_element(By.XPATH, "//button[text()='Sign out']").click()
    wait(browser).until(ec.presence_of_element_located((By.LINK_TEXT, "Sign in")))


def test_keyboard_navigation(browser: WebDriver, site: Site) -> None:
    sign_in(browser, site, "root")
    browser.get(site.url + "/")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Skip to content"
    # Tab on until the first repository link has the focus, then Enter opens it.
    for _ in range(20):
        focused = browser.switch_to.active_element
        if focused.text == "secret/vault":
            break
        focused.send_keys(Keys.TAB)
    else:
        pytest.fail("tabbing never reached the first repository")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser).until(ec.title_contains("secret/vault"))
    assert browser.current_url.endswith("/repositories/secret/vault")
