"""Notebook 00 in a real JupyterLab, driven by headless Chromium like a learner's browser.

Starts JupyterLab (no browser, a free local port, a random token) on a copy of notebook 00, opens
it in Chromium, runs every cell in the ``smoke`` tier, then uses the calibration explorer at the
end: moves its bins slider and picks another method in its dropdown, and checks that the figure's
title and the metrics table follow (the new number of bins, the new method, a new ECE). Finally
shuts JupyterLab down and checks that no process of it is left.

Takes a minute or two (model load, the notebook's smoke-tier cells; its final fine-tune loads the
committed checkpoints). Skips only where no Chromium can be found (see tests/browser.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser import SCREENSHOTS, browser, chromium_or_skip, free_port

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "00_task_and_calibration.ipynb"
RUN_TIMEOUT_MS = int(os.environ.get("POLAR_VBLL_LAB_TIMEOUT", 15 * 60)) * 1000  # every cell of notebook 00 in the smoke tier, on a loaded machine


def _group_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a folder with notebook 00; yields (base URL, token); stops it after."""
    chromium_or_skip()
    notebook = json.loads(NOTEBOOK.read_text())  # the committed notebooks name no kernel: use
    notebook["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3",  # this Python's
                                          "language": "python"}
    (tmp_path / NOTEBOOK.name).write_text(json.dumps(notebook))
    port, token = free_port(), secrets.token_hex(16)
    # fresh user settings: no "receive Jupyter news?" toast over the notebook in the screenshot
    settings = tmp_path / ".lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    environment = {**os.environ, "POLAR_VBLL_PROFILE": "smoke", "TQDM_DISABLE": "1",
                   "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"),
                   "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / ".lab-settings"),
                   "JUPYTER_RUNTIME_DIR": str(tmp_path / ".runtime")}
    log = open(tmp_path / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.allow_root=True", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
         "jupyterlab.NeverCheckForUpdate"],
        env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as answer:
                    json.load(answer)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
                time.sleep(1)
        yield base, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its kernels share its session
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _group_members(server.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _group_members(server.pid)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        log.close()
        assert not left, f"JupyterLab left processes behind: {left}"


def test_the_calibration_explorer_of_notebook_00_responds_in_jupyterlab(jupyterlab):
    base, token = jupyterlab
    with browser() as instance:
        page = instance.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        try:
            _use_the_explorer(page, base, token)
        except Exception:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "jupyterlab_failure.png"))
            raise


def _wait_for_title(page, text: str) -> None:
    """Wait until the explorer's plotly figure (redrawn on every change) has the title ``text``."""
    page.wait_for_function("text => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                           ".some(e => e.textContent === text)", arg=text, timeout=60_000)


def _use_the_explorer(page, base: str, token: str) -> None:
    """Open notebook 00, run all cells, then move the explorer's bins slider and method dropdown."""
    page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for()
    page.locator(".jp-NotebookPanel-toolbar").first.wait_for()
    # run only once the kernel is up: a run request sent while it starts can be lost
    page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for(timeout=180_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

    # the explorer: a VBox whose first row holds the method and dataset dropdowns
    explorer = page.locator(".widget-vbox").filter(has=page.locator(".widget-dropdown")).filter(
        has=page.locator(".widget-html")).last
    page.locator(".jp-InputArea-prompt").filter(has_text="[1]:").first.wait_for(timeout=120_000)
    explorer.wait_for(timeout=RUN_TIMEOUT_MS)
    table, title = explorer.locator(".widget-html"), explorer.locator(".js-plotly-plot .gtitle")
    title.wait_for(timeout=60_000)
    page.wait_for_function("() => !document.querySelector('.jp-Notebook-ExecutionIndicator') || "
                           "document.querySelector('.jp-Notebook-ExecutionIndicator')"
                           ".getAttribute('data-status') !== 'busy'", timeout=RUN_TIMEOUT_MS)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [text for text in errors.all_inner_texts() if "Traceback" in text or "Error" in text]
    assert not tracebacks, "a cell failed:\n" + "\n".join(tracebacks)[-3000:]
    before_title, before_table = title.text_content(), table.inner_text()
    assert "(15 bins)" in before_title and "ECE (15 bins)" in before_table, (before_title, before_table)
    method = explorer.locator(".widget-dropdown").filter(has_text="method").locator("select")
    assert method.input_value() == "zero_shot"

    # the bins slider: one step to the right with the keyboard, as a learner would
    bins = explorer.locator(".widget-slider").filter(has_text="bins").locator(".noUi-handle").first
    bins.focus()
    page.keyboard.press("ArrowRight")
    _wait_for_title(page, "zero_shot on arc_easy (16 bins)")
    zero_shot_table = table.inner_text()
    assert "ECE (16 bins)" in zero_shot_table, zero_shot_table

    # another method: title and ECE follow
    method.select_option(label="mle")
    _wait_for_title(page, "mle on arc_easy (16 bins)")
    page.wait_for_function("old => [...document.querySelectorAll('.widget-html')]"
                           ".some(e => e.innerText.includes('ECE') && e.innerText !== old)",
                           arg=zero_shot_table, timeout=60_000)
    ece_of = lambda text: [line for line in text.splitlines() if line.startswith("ECE")]
    assert ece_of(table.inner_text()) != ece_of(zero_shot_table), (zero_shot_table, table.inner_text())
    assert ece_of(table.inner_text())[0].startswith("ECE (16 bins)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    explorer.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "jupyterlab_00_calibration_explorer.png"))
