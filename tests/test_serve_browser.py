"""The page at / of `dlc serve` in a real browser: headless Chromium driven by Selenium through
Debian's chromedriver (never a downloaded browser). The one-sample form is filled and
submitted, a CSV file goes through the upload control, and what the page shows is read back;
a screenshot must be a non-blank PNG. Skipped only where chromium or chromedriver is absent
(`apt-get install chromium chromium-driver`; `.ci/run` installs them when it runs as root)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SPECS
from test_serve import (IRIS_ROW, Served, assert_same_predictions, csv_records,  # noqa: F401
                        expected_json, iris_model, iris_server, needs_server)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [needs_server, pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-proxy-server", "--window-size=1000,900"]


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a fresh profile, driven by the system's chromedriver."""
    from selenium import webdriver  # the dev extra
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def submitted(driver, form: str) -> tuple[str, str]:
    """Submit the form with id `form` by its button; (text, class) of the result once shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = driver.find_element(By.ID, "out")
    driver.execute_script("arguments[0].textContent = '(waiting)'", out)
    driver.find_element(By.CSS_SELECTOR, f"form#{form} button[type=submit]").click()
    WebDriverWait(driver, 30).until(lambda d: out.text != "(waiting)")
    return out.text, out.get_attribute("class")


def assert_painted(png: Path) -> None:
    """A PNG of the window's size that holds text, not one flat colour."""
    from PIL import Image  # the dev extra

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        gray = image.convert("L")
        assert gray.size[0] >= 800 and gray.size[1] >= 600, gray.size
        lo, hi = gray.getextrema()
        dark = sum(gray.histogram()[:128])  # text pixels on the light page
    assert hi - lo > 128 and 0.001 < dark / (gray.size[0] * gray.size[1]) < 0.5, (lo, hi, dark)


def test_page_in_chromium_predicts_a_row_and_a_csv(browser, cli, iris_model, iris_server,
                                                   tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(iris_server.url)
    assert browser.title == "iris · dlc serve"
    fields = browser.find_elements(By.CSS_SELECTOR, "form#row input[name]")
    assert [f.get_attribute("name") for f in fields] == list(IRIS_ROW)
    assert len({f.location["x"] for f in fields}) == 1  # the fields in one column, not ragged
    for field in fields:
        field.send_keys(str(IRIS_ROW[field.get_attribute("name")]))
    text, kind = submitted(browser, "row")
    assert kind == "", text
    status, direct = iris_server.post({"rows": [IRIS_ROW]})
    assert status == 200 and json.loads(text) == direct["predictions"]
    assert json.loads(text)[0]["label"] == "setosa"

    sample = SPECS / "data" / "iris_sample.csv"
    browser.find_element(By.CSS_SELECTOR, "form#csv input[type=file]").send_keys(str(sample))
    text, kind = submitted(browser, "csv")
    assert kind == "", text
    want = expected_json(cli, iris_model, sample, tmp_path)
    assert len(want) == len(csv_records(sample))
    assert_same_predictions(json.loads(text), want)

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    assert_painted(shot)


def test_page_in_chromium_shows_the_servers_error(browser, iris_server):
    from selenium.webdriver.common.by import By

    browser.get(iris_server.url)
    for field in browser.find_elements(By.CSS_SELECTOR, "form#row input[name]"):
        if field.get_attribute("name") != "petal_width":  # left empty: sent as null
            field.send_keys("1.5")
    text, kind = submitted(browser, "row")
    assert kind == "error"
    assert text == "422: rows[0].petal_width: expected number, found null"
