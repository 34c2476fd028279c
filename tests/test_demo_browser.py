"""`diffusers-mv3d demo` as a person and a script meet it: the real server in a subprocess on 127.0.0.1
(a tiny random pipeline), driven by headless Chromium through selenium, and its HTTP API called
directly with values the page would never send.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``)
and the Python packages ``selenium`` and ``gradio`` (the ``[dev]`` extra). Without them the tests
skip, unless ``MV3D_REQUIRE_BROWSER=1`` (as .ci/run sets): then they fail, so CI cannot pass without
running them.

Run as a script, the same driver takes the screenshot of docs/demo.md with any model:

    python tests/test_demo_browser.py --model pipelines/tunemv3d-tiny --steps 10 --screenshot docs/demo.png
"""
import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REQUIRE = os.environ.get("MV3D_REQUIRE_BROWSER") == "1"
PROMPT = "a red chair with armrests"
SERVER_START_S = 120  # importing torch, diffusers and gradio on a busy 2-core machine
GENERATE_S = 90


def find_browser():
    """``(chromium, chromedriver)`` paths, or None for each one that is missing."""
    chromium = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                     if p and os.path.exists(p)), None)
    driver = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if p and os.path.exists(p)), None)
    return chromium, driver


def require(what: str, present) -> None:
    """Skip without ``what``; fail instead when MV3D_REQUIRE_BROWSER=1."""
    if not present:
        message = f"the browser test needs {what}"
        if REQUIRE:
            pytest.fail(f"{message} (MV3D_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(message)


def has_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- the server and the browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoServer:
    """``diffusers-mv3d demo`` in a subprocess on 127.0.0.1; its console goes to ``log``."""

    def __init__(self, model: str, out: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        command = Path(sys.executable).with_name("diffusers-mv3d")
        command = [str(command)] if command.exists() else [sys.executable, "-m", "diffusers_mv3d.cli"]
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "GRADIO_TEMP_DIR": str(out.parent / "gradio-cache")}
        self.console = open(log, "wb")
        self.process = subprocess.Popen(
            [*command, "demo", "--model", model, "--port", str(self.port), "--out", str(out)],
            stdout=self.console, stderr=subprocess.STDOUT, env=env,
        )

    def console_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_until_serving(self, timeout: float = SERVER_START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the demo exited with {self.process.returncode}:\n{self.console_tail()}")
            if self.alive():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the demo did not serve {self.url} within {timeout} s:\n{self.console_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.console.close()


def start_browser(chromium: str, driver: str, width: int = 1400, height: int = 1200):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--enable-unsafe-swiftshader"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_for(condition, timeout: float, what: str, poll: float = 0.1):
    """Poll ``condition()`` until it returns something truthy; an AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # elements come and go while Svelte re-renders
            value = condition()
            if value:
                return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------- what a person does on the page


def open_page(browser, url: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    parts = ("#prompt textarea", "#steps input[type=number]", "button#generate", "#gallery", "#model3d", "#turntable",
             "#status textarea")  # the page renders progressively: wait for every part the tests use
    wait_for(lambda: all(browser.find_element(By.CSS_SELECTOR, part).is_displayed() for part in parts), 30, "the page")


def set_number(browser, elem_id: str, value) -> None:
    """Type ``value`` into the number box of the slider (or number field) ``elem_id``, as a person would."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def status_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, "#status textarea").get_attribute("value")


def progress_texts(browser) -> set:
    """What the output components' progress trackers show now (Gradio's status-tracker elements)."""
    from selenium.webdriver.common.by import By

    return {" ".join(e.text.split()) for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid=status-tracker]")
            if e.text.strip()}


def error_toasts(browser) -> list:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]") if e.text.strip()]


def generate_on_page(browser, prompt: str, steps: int, timeout: float = GENERATE_S):
    """Type ``prompt``, set Steps, click Generate and wait for the Status line. Returns
    ``(status, progress texts seen while it ran)``."""
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.clear()
    box.send_keys(prompt)
    set_number(browser, "steps", steps)
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#steps input[type=range]").get_attribute("value")
             == str(steps), 5, "the Steps slider to follow its number box")
    browser.find_element(By.ID, "generate").click()
    seen = set()

    def finished():
        seen.update(progress_texts(browser))
        return error_toasts(browser) or status_text(browser)

    result = wait_for(finished, timeout, "the Status line")
    if isinstance(result, list):
        raise AssertionError(f"the page shows an error: {result}")
    return result, seen


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def browser_paths():
    chromium, driver = find_browser()
    require("Chromium (apt-get install -y chromium)", chromium)
    require("chromedriver (apt-get install -y chromium-driver)", driver)
    require("selenium (pip install selenium)", has_module("selenium"))
    require('gradio (pip install -e ".[demo]")', has_module("gradio"))
    return chromium, driver


@pytest.fixture(scope="module")
def server(browser_paths, tmp_path_factory):
    from dummies import randomize_branch, tiny_pipeline

    pipe = tiny_pipeline()
    randomize_branch(pipe)
    model = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(model)
    work = tmp_path_factory.mktemp("demo")
    server = DemoServer(str(model), work / "out", work / "console.log")
    try:
        server.wait_until_serving()
        yield server
    finally:
        server.stop()
        print(f"the demo's console:\n{server.console_tail()}")  # pytest shows it when a test failed


@pytest.fixture(scope="module")
def browser(browser_paths):
    browser = start_browser(*browser_paths)
    yield browser
    browser.quit()


def test_generate_in_a_real_browser(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)

    # an empty prompt: a toast with a sentence, nothing generated
    browser.find_element(By.ID, "generate").click()
    toasts = wait_for(lambda: error_toasts(browser), 15, "the empty-prompt error on the page")
    assert any("Prompt is empty: give a prompt, or a reference image" in toast for toast in toasts), toasts
    assert not status_text(browser)
    for close in browser.find_elements(By.CSS_SELECTOR, "[data-testid=toast-close]"):
        close.click()
    wait_for(lambda: not error_toasts(browser), 5, "the toast to close")

    # the default click (8 views, mesh and turntable on) with 2 steps
    status, progress = generate_on_page(browser, PROMPT, steps=2)
    # short: the sub-folder of --out, not a server path
    assert re.fullmatch(r"8 views, 2 steps in [\d.]+ s; with the mesh and turntable [\d.]+ s; saved in [\w-]+/",
                        status), status
    assert any(re.search(r"\d/2 steps .*(denoising 8 views|mesh and turntable)", text) for text in progress), progress
    views = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#gallery img[src]"), 10, "the gallery's views")
    assert len({view.get_attribute("src") for view in views}) == 8
    assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#model3d canvas"), 10, "the mesh viewer")
    assert wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#model3d a[download]").get_attribute("href")
                    .endswith("mesh.glb"), 10, "the mesh's download link")
    turntable = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#turntable img[src]"), 10, "the turntable")
    assert turntable.get_attribute("src").endswith("turntable.gif")
    assert wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                   turntable), 10, "the turntable to load") == 128
    assert not error_toasts(browser)


def test_the_server_enforces_its_limits_through_its_http_api(server, tmp_path):
    """What a script can send, the page cannot: the server refuses it with a sentence and keeps serving."""
    import PIL.Image
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, download_files=False)
    values = dict(prompt=PROMPT, image=None, views=8, steps=1, seed=0, guidance=3.0, k=0.5, alpha=7.5, mesh=False,
                  resolution=16, elevation=20.0, azimuths="")

    def refused(**changes) -> str:
        with pytest.raises(Exception) as error:  # gradio_client's AppError, with the page's message
            client.predict(*{**values, **changes}.values(), api_name="/generate")
        return str(error.value)

    message = refused(views=100_000)  # the 10^5 views: refused at once (by Gradio's slider check or ours)
    assert "100000" in message and "16" in message, message
    assert "Views must be a whole number from 1 to 16, got 2.5" in refused(views=2.5)
    assert "Prompt is too long: 301 characters (at most 300)" in refused(prompt="x" * 301)
    assert "Azimuths: give 1 to 16 angles in degrees, got 17" in refused(azimuths=",".join(["0"] * 17))
    PIL.Image.new("L", (4097, 1)).save(tmp_path / "wide.png")
    assert "Reference image is too large: 4097x1 pixels" in refused(image=handle_file(str(tmp_path / "wide.png")))

    assert server.alive() and server.process.poll() is None
    gallery, mesh, turntable, status = client.predict(*{**values, "azimuths": "0, 180"}.values(), api_name="/generate")
    assert len(gallery) == 2 and mesh is None and status.startswith("2 views, 1 steps in ")


# ---------------------------------------------------------------- the screenshot of docs/demo.md


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="start the demo, generate once in headless Chromium, screenshot it")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the embedded pipelines/tunemv3d-tiny)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--screenshot", type=Path, default=Path("docs/demo.png"))
    args = parser.parse_args(argv)
    chromium, driver = find_browser()
    if not (chromium and driver):
        raise SystemExit("needs chromium and chromedriver: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.common.by import By

    from diffusers_mv3d.generate import resolve_model

    with tempfile.TemporaryDirectory() as work:
        server = DemoServer(resolve_model(args.model), Path(work) / "out", Path(work) / "console.log")
        browser = None
        try:
            server.wait_until_serving()
            browser = start_browser(chromium, driver, width=1280, height=1500)
            open_page(browser, server.url)
            browser.find_element(By.CSS_SELECTOR, "#cameras > button").click()  # show the camera fields too
            start = time.monotonic()
            status, _ = generate_on_page(browser, args.prompt, args.steps, timeout=600)
            print(f"{status} ({time.monotonic() - start:.1f} s in the browser)")
            time.sleep(3)  # the mesh viewer and the turntable finish loading
            browser.save_screenshot(str(args.screenshot))
            print(f"wrote {args.screenshot}")
        finally:
            if browser is not None:
                browser.quit()
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
