"""Headless Chromium for the MLflow UI checks (tests/tracking/test_mlflow_ui.py, tests/telemetry/test_telemetry.py): what the
browser needs, a free port for `mlflow ui`, where screenshots go, and waiting for a page's text. The
``browser`` fixture itself is in conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Screenshots go here when set (e.g. UI_SHOTS_DIR=/tmp/ui_shots), else into the test's tmp folder.
SHOTS_ENV = "UI_SHOTS_DIR"
BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1600,1000")
UI_TIMEOUT_S = 60


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return (f"{path} not found: the MLflow UI check needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium) for the MLflow UI check"
    return None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shots_folder(tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for_text(driver, text: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, UI_TIMEOUT_S).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    return driver.find_element(By.TAG_NAME, "body").text
