"""Headless Chromium (Debian's package, e2e/toolchain/hub.sh) driven by Selenium through Debian's
chromedriver: what a user does in JupyterLab, read back from the rendered page."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

T = TypeVar("T")


def chromium() -> webdriver.Chrome:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        raise RuntimeError("chromium or chromedriver missing: run e2e/toolchain/hub.sh (make toolchain)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--disable-extensions"):  # fmt: skip
        opts.add_argument(arg)
    # Never Selenium Manager's downloads: the driver path is given.
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


def wait_for(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll the page until `fn` returns something truthy (DOM lookups raise while it re-renders)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if value := fn():
                return value
        except WebDriverException as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last: {last!r})" if last else ""))


class Lab:
    """JupyterLab as a user drives it: log in through the hub, open a notebook, run cells."""

    def __init__(self, driver: webdriver.Chrome, hub_url: str) -> None:
        self.d = driver
        self.hub_url = hub_url

    def login(self, user: str, password: str) -> None:
        self.d.get(f"{self.hub_url}/hub/login")
        wait_for(lambda: self.d.find_element(By.ID, "username_input"), 60, "the hub's login form")
        self.d.find_element(By.ID, "username_input").send_keys(user)
        self.d.find_element(By.ID, "password_input").send_keys(password)
        self.d.find_element(By.ID, "login_submit").click()

    def new_notebook(self, user: str, kernel_display_name: str) -> None:
        """From the Launcher: the notebook card of the kernelspec (its display name)."""
        self.d.get(f"{self.hub_url}/user/{user}/lab")
        xpath = (
            "//div[contains(@class,'jp-LauncherCard') and @data-category='Notebook']"
            f"[.//*[normalize-space(text())='{kernel_display_name}'] or @title='{kernel_display_name}']"
        )
        card = wait_for(lambda: self.d.find_element(By.XPATH, xpath), 180, f"the launcher card {kernel_display_name!r}")
        card.click()
        wait_for(lambda: self.d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"), 60, "a new notebook")

    def kernel_idle(self, kernel_display_name: str) -> bool:
        """The status bar says the notebook's kernel is idle ("<name> | Idle"; "Initializing" while
        the kernel starts: the toolbar's execution indicator says idle before there is a kernel)."""
        bar = self.d.find_elements(By.ID, "jp-main-statusbar")
        return bool(bar) and f"{kernel_display_name} | Idle" in bar[0].text

    def cells(self) -> list[Any]:
        return self.d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Notebook .jp-Cell")

    def run(self, code: str) -> int:
        """Type `code` into the last cell and run it (Shift+Enter); its index."""
        cells = self.cells()
        index = len(cells) - 1
        editor = cells[index].find_element(By.CSS_SELECTOR, ".cm-content")
        editor.click()
        editor.send_keys(code)
        webdriver.ActionChains(self.d).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        return index

    def output(self, index: int) -> str:
        outs = self.cells()[index].find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
        return "\n".join(o.text for o in outs)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.d.save_screenshot(str(path))
