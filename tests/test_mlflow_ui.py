"""The MLflow UI as a user meets it, in a real browser: `uadp ui` on a store with two finished
runs opens on the runs table with the key metrics (not MLflow's GenAI pages), both runs can be
selected and compared, and the compare view shows ``pooled/image_auroc`` with the values the
store holds.

It needs Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``) and
Selenium (the ``test`` extra). Without a browser it is skipped, unless ``UADP_BROWSER_TEST=required``
(as in CI), where a missing browser fails it. ``UADP_SCREENSHOT_DIR`` keeps its screenshots.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from uadp.tracking import KEY_METRICS

REQUIRED = os.environ.get("UADP_BROWSER_TEST") == "required"
CHROMIUM = os.environ.get("UADP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = os.environ.get("UADP_CHROMEDRIVER") or shutil.which("chromedriver")
WAIT_S = 60  # the UI's first page load on two busy cores


def _need_browser() -> None:
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def _screenshot(driver, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("UADP_SCREENSHOT_DIR"):
        folder = Path(os.environ["UADP_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, folder / name)


def _wait_for_text(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)


def test_the_browser_renders_a_page(browser, tmp_path: Path) -> None:
    """The fast tier's part of this module: the browser and its driver start and render a page
    (the UI's own pages need a server and two runs, which the slow tests start)."""
    page = tmp_path / "page.html"
    page.write_text("<html><body><p>pooled/image_auroc</p></body></html>", encoding="utf-8")
    browser.get(page.as_uri())
    _wait_for_text(browser, "pooled/image_auroc")


@pytest.mark.slow
def test_ui_opens_on_the_runs_table_and_compares_two_runs(ui, two_runs: dict, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(ui.link)
    for run in two_runs["runs"].values():
        _wait_for_text(browser, run.info.run_name)
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Run Name" in page
    assert "Token Usage" not in page and "Traces\n0" not in page  # not the GenAI overview
    for key in KEY_METRICS:  # the key metrics are the table's columns
        assert key in page
    _screenshot(browser, "mlflow-runs.png", tmp_path)

    select_all = browser.find_element(By.CSS_SELECTOR, "input[aria-label='Select all runs']")
    browser.execute_script("arguments[0].click()", select_all)
    compare = [b for b in browser.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Compare"]
    assert compare, "no Compare button after selecting the runs"
    compare[0].click()
    _wait_for_text(browser, "Comparing 2 Runs")
    _wait_for_text(browser, "Show diff only")
    shown = _compare_row(browser, "pooled/image_auroc")
    order = re.findall(r"[0-9a-f]{32}", browser.find_element(By.XPATH, "//*[contains(text(),'Run ID')]/..").text)
    assert sorted(order) == sorted(two_runs["runs"])
    for run_id, text in zip(order, shown, strict=True):
        assert float(text) == pytest.approx(two_runs["runs"][run_id].data.metrics["pooled/image_auroc"], abs=5e-4)
    _screenshot(browser, "mlflow-compare.png", tmp_path)


def _compare_row(driver, metric: str) -> list[str]:
    """The values of one metric in the compare view. Its metric table is two virtualised grids
    (names, values) that only render the rows in view: scroll the names to the metric, then the
    values to the same row, and read the cells at that row's offset."""
    from selenium.webdriver.common.by import By

    grids = driver.find_elements(By.CSS_SELECTOR, "[role=grid]")
    names = next(g for g in grids if "image_auroc" in g.text)
    values = next(g for g in grids if g != names)
    xpath = f".//*[normalize-space(text())='{metric}']"
    for _ in range(200):
        found = names.find_elements(By.XPATH, xpath)
        if found:
            break
        driver.execute_script("arguments[0].scrollTop += 200", names)
        time.sleep(0.1)
    assert found, f"{metric} is not in the compare view's metrics"
    style = found[0].find_element(By.XPATH, "ancestor::div[contains(@style,'top:')][1]").get_attribute("style")
    top = int(re.search(r"top: (\d+)px", style).group(1))
    driver.execute_script("arguments[0].scrollTop = arguments[1]", values, max(0, top - 100))
    time.sleep(0.5)
    cells = values.find_elements(By.XPATH, f".//div[contains(@style,'top: {top}px')]")
    return [cell.text for cell in cells]


@pytest.mark.slow
def test_a_runs_page_opens_on_its_key_metrics_and_shows_its_overlays(ui, two_runs: dict, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run_id, run = next((i, r) for i, r in two_runs["runs"].items() if r.data.tags["uadp.aligner"] == "cada")
    base = ui.link.split("/#/")[0]
    experiment = run.info.experiment_id
    browser.get(f"{base}/#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning")
    _wait_for_text(browser, "Description")
    page = browser.find_element(By.TAG_NAME, "body").text
    description = page.split("Description", 1)[1]
    assert description.index("image AUROC") < description.index("Metrics")  # the summary comes first
    assert f"{run.data.metrics['base/pooled/image_auroc']:.3f}" in description

    browser.get(f"{base}/#/experiments/{experiment}/runs/{run_id}/artifacts?workflowType=machine_learning")
    _wait_for_text(browser, "overlays")
    browser.execute_script(
        "arguments[0].click()", browser.find_element(By.XPATH, "//*[normalize-space(text())='overlays']")
    )
    _wait_for_text(browser, "blobs.png")
    browser.execute_script(
        "arguments[0].click()", browser.find_element(By.XPATH, "//*[normalize-space(text())='blobs.png']")
    )
    shown = WebDriverWait(browser, WAIT_S).until(
        lambda d: [i for i in d.find_elements(By.TAG_NAME, "img") if i.size["width"] > 200]
    )
    assert shown, "the overlay picture is not shown"
    _screenshot(browser, "mlflow-overlay.png", tmp_path)
