"""The worker's live page in a real browser (Debian's headless Chromium, driven by Selenium):
it loads, signals stream in while events flow through a real Kafka, and a lookup shows a user."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from stream.logic.ingest import Pseudonymizer

from .conftest import KEY, produce_events
from .test_api import simulated

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TOKEN = "integration-page-token-0123456789"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="Debian's chromium and chromium-driver are not installed: run `make tools`"),  # fmt: skip
]


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,900"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))


def test_page_shows_live_signals_and_looks_a_user_up(system, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings, new_worker = system
    worker = new_worker(INTENTSTREAM_API_TOKEN=TOKEN)
    worker.start()
    raw = simulated(seed=21, users=40, n=4000)
    stop = threading.Event()

    def traffic() -> None:  # about 200 events/s while the page is open
        for i in range(0, len(raw), 100):
            if stop.is_set():
                return
            produce_events(settings.kafka_bootstrap_servers, settings.events_topic, raw[i : i + 100])
            time.sleep(0.5)

    producer = threading.Thread(target=traffic, daemon=True)
    producer.start()
    driver = browser(tmp_path / "chromium-profile")
    try:
        driver.get(f"http://127.0.0.1:{worker.web_port}/ui/")
        assert "intentstream" in driver.title
        token = driver.find_element(By.ID, "token")
        token.send_keys(TOKEN)
        driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", token)
        wait = WebDriverWait(driver, 60, poll_frequency=0.5)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#signals li")) >= 5)
        wait.until(lambda d: d.find_element(By.ID, "events-per-s").text not in ("", "–", "0"))
        assert driver.find_element(By.ID, "lag").text != "–"
        assert driver.find_element(By.ID, "partitions").text == "0, 1, 2, 3"
        shown = driver.find_elements(By.CSS_SELECTOR, "#signals li")[0].text
        assert any(task in shown for task in ("purchase_intent", "latent_needs", "churn_risk"))

        # A lookup by the raw id, as the shop knows it; the page shows the pseudonym the signals carry.
        raw_id = raw[0]["user_id"]
        driver.find_element(By.ID, "user-id").send_keys(raw_id)
        driver.find_element(By.CSS_SELECTOR, "#lookup-form button").click()
        table = wait.until(lambda d: d.find_elements(By.ID, "user"))[0]
        assert Pseudonymizer(KEY.encode())(raw_id) in table.text
        assert "purchase intent" in table.text and "latent needs" in table.text
        shot = tmp_path / "page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        artifacts = Path(__file__).resolve().parents[2] / "artifacts"  # git-ignored, kept for a look
        artifacts.mkdir(exist_ok=True)
        shutil.copy(shot, artifacts / "page.png")
        print(f"screenshot: {shot}")
    finally:
        stop.set()
        driver.quit()
        producer.join(30)
    # The page itself asks for nothing outside the worker.
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/ui/", timeout=5) as r:
        assert b"://" not in r.read()
