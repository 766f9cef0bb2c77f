"""``opom web`` in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``) drives the page.

One end-to-end run on the real test photos (``make test-assets``) with the real models: upload 3 photos and make the
mask (a small enrolment: the paper preset, eps 16, 6 iterations; ``OPOM_WEB_TEST_ITERATIONS=`` for the preset's),
save the mask file, protect a photo of the person, one of someone else and a file that is not a photo, download the
protected copy, ask "still recognised?", then in a second tab: a bad enrolment gets the CLI's error line and the
saved mask file loads. Screenshots of every step are kept as test artefacts in ``outputs/test-artefacts/web/`` (or
``$OPOM_TEST_ARTEFACTS/web/``). Skipped, saying why, without Chromium.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from real_photos import PhotosUnavailable, _fr_source, _read_from

from opom.cloak.cli import main

pytestmark = [pytest.mark.browser, pytest.mark.real]

SRC = Path(__file__).resolve().parents[1] / "src"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1280,1000"]
INSTALL = "apt-get install chromium chromium-driver; .ci/run installs them"


def chromium() -> tuple[str, str]:
    """Paths of Chromium and its WebDriver (``$OPOM_CHROMIUM`` / ``$OPOM_CHROMEDRIVER`` or on the PATH)."""
    browser = os.environ.get("OPOM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("OPOM_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(f"browser test skipped: Chromium or chromedriver is not installed ({INSTALL})")
    if not (os.path.isfile(browser) and os.path.isfile(driver)):
        pytest.skip(f"browser test skipped: {browser} or {driver} does not exist ({INSTALL})")
    return browser, driver


@pytest.fixture
def artefacts(request) -> Path:
    root = Path(os.environ.get("OPOM_TEST_ARTEFACTS") or request.config.rootpath / "outputs" / "test-artefacts")
    folder = root / "web"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    try:
        source = _fr_source()
    except PhotosUnavailable as err:
        pytest.skip(str(err))
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("obama", "obama2", "obama3", "biden"):
        (folder / f"{name}.jpg").write_bytes(_read_from(source, f"{name}.jpg"))
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.fixture
def server():
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "opom.cloak.cli", "web", "--no-browser"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    first, second = proc.stdout.readline(), proc.stdout.readline()
    url, root = re.search(r"http://127\.0\.0\.1:\d+/", first), re.search(r"stay in (\S+)", second)
    assert url and root, first + second
    yield proc, url.group(0), Path(root.group(1))
    proc.kill()


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    # the driver path is given, so Selenium Manager (which would download drivers) never runs
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_for(driver, test, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: test(d), message=what)


def visible(css: str):
    from selenium.webdriver.common.by import By

    def test(driver):
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found and found[0].is_displayed() else None
    return test


def downloaded(folder: Path, suffix: str, timeout: float = 30) -> Path:
    for _ in range(int(timeout / 0.2)):
        done = [p for p in folder.iterdir() if p.name.endswith(suffix)]
        if done and not list(folder.glob("*.crdownload")):
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no {suffix} file was downloaded into {folder}: {sorted(folder.iterdir())}")


def screenshot(driver, path: Path, full: bool = True) -> None:
    if full:  # the whole page, not only the window
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(max(height + 160, 600), 6000))  # + the window frame around the page
        driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(path))


def test_page_upload_enroll_protect_download_check_in_chromium(browser, photos, server, artefacts, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from opom.cloak.mask import load_person_mask

    proc, url, root = server
    find = browser.find_element
    browser.get(url)
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-session"), 30, "a session")
    screenshot(browser, artefacts / "1_page.png")

    # 1. enroll: three photos of one person, a tiny enrolment
    find(By.CSS_SELECTOR, "#step-enroll details.advanced summary").click()
    Select(find(By.ID, "enroll-strength")).select_by_value("paper")  # one surrogate: quick
    find(By.ID, "enroll-eps").send_keys("16")  # a small enrolment that still fools its own surrogate
    find(By.ID, "enroll-iterations").send_keys(os.environ.get("OPOM_WEB_TEST_ITERATIONS", "6"))  # "": the preset's
    find(By.ID, "enroll-input").send_keys("\n".join(str(photos / f"{n}.jpg") for n in ("obama", "obama2", "obama3")))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#enroll-list img")) == 3
    find(By.ID, "enroll-go").click()
    wait_for(browser, visible("#enroll-progress"), 30, "the progress indicator")
    screenshot(browser, artefacts / "2_enrolling.png", full=False)
    result = wait_for(browser, visible("#enroll-result"), 300, "the mask")
    assert "Your mask is ready, made from 3 photo(s)." in result.text
    screenshot(browser, artefacts / "3_enrolled.png")
    find(By.ID, "mask-save").click()
    mask = downloaded(browser.downloads, ".safetensors")
    assert load_person_mask(mask).identity == "me"

    # 2. protect: the person, someone else (no match), and a file that is not a photo
    find(By.ID, "protect-input").send_keys("\n".join(str(photos / n) for n in ("obama.jpg", "biden.jpg", "notes.txt")))
    find(By.ID, "protect-go").click()
    wait_for(browser, visible("#protect-summary"), 300, "the protected copies")
    cards = {c.find_element(By.TAG_NAME, "h3").text.split(" ", 1)[1]: c
             for c in browser.find_elements(By.CSS_SELECTOR, "#protect-results .card")}
    assert set(cards) == {"obama.jpg", "biden.jpg", "notes.txt"}
    assert cards["obama.jpg"].find_element(By.CLASS_NAME, "badge").text == "PROTECTED"
    assert "none matches 'me'" in cards["biden.jpg"].text and "not an image file" in cards["notes.txt"].text
    zooms = cards["obama.jpg"].find_elements(By.CSS_SELECTOR, ".zooms img")
    assert len(zooms) == 3 and all(browser.execute_script("return arguments[0].naturalWidth", z) > 0 for z in zooms)
    screenshot(browser, artefacts / "4_protected.png")
    cards["obama.jpg"].find_element(By.LINK_TEXT, "Download the protected copy").click()
    copy = downloaded(browser.downloads, ".jpg")
    assert copy.name == "obama.jpg" and copy.read_bytes() != (photos / "obama.jpg").read_bytes()
    assert copy.read_bytes() == next(root.glob("*/jobs/*/protected/obama.jpg")).read_bytes()

    # 3. still recognised? every available panel model gives a verdict in plain words
    find(By.ID, "check-go").click()
    wait_for(browser, visible("#check-result"), 300, "the verdicts")
    rows = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#check-rows li")]
    assert rows and any("SFace" in r for r in rows)
    assert all(re.search(r"(no longer|still) recognises you in obama\.jpg", r) for r in rows), rows
    screenshot(browser, artefacts / "5_checked.png")

    # a second tab: its own session; a bad enrolment gets the CLI's line; the saved mask loads
    browser.switch_to.new_window("tab")
    browser.set_window_size(1280, 1000)
    browser.get(url)
    wait_for(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-session"), 30, "a session")
    find(By.ID, "enroll-input").send_keys(str(photos / "notes.txt"))
    find(By.ID, "enroll-go").click()
    error = wait_for(browser, visible("#enroll-error"), 60, "the error line").text
    assert main(["enroll", str(photos / "notes.txt"), "--out", str(photos / "x.safetensors")]) == 2
    assert error == capsys.readouterr().err.strip()
    find(By.ID, "mask-load-input").send_keys(str(mask))
    wait_for(browser, visible("#enroll-result"), 30, "the loaded mask")
    assert "Loaded from me.safetensors" in find(By.ID, "enroll-result").text
    assert "locked" not in find(By.ID, "step-protect").get_attribute("class")
    screenshot(browser, artefacts / "6_second_tab.png")
    assert len(list(root.iterdir())) == 2  # one folder per tab

    # stopping the server removes every upload
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and not root.exists(), rest
    print(f"screenshots: {artefacts}")
