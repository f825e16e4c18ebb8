"""The live page in a real browser: headless Chromium driven by Playwright.

Debian's ``chromium`` and Playwright's Python package are put in place by
``scripts/ensure-browser`` (run here when either is missing).  Playwright's
sync API runs in a Trio worker thread (it brings its own asyncio loop), while
the cluster and a continuously running graph live in the test's Trio loop.

The test checks what a person would: worker rows appear, progress bars and
task-stream bars appear and change while work runs; and it saves a
screenshot (into ``docs/_static/dashboard.png`` for the docs only when
``TRIOFLOW_UPDATE_SCREENSHOT=1``: a test run leaves the checkout clean).
"""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from trioflow import open_client, open_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = ROOT / "docs" / "_static" / "dashboard.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser_ready() -> None:
    if not os.access(CHROMIUM, os.X_OK) or importlib.util.find_spec("playwright") is None:
        proc = subprocess.run([str(ROOT / "scripts" / "ensure-browser")], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"scripts/ensure-browser failed:\n{proc.stdout}\n{proc.stderr}")
        importlib.invalidate_caches()
    if importlib.util.find_spec("playwright") is None:
        pytest.fail("playwright is not importable even after scripts/ensure-browser")


# ---------------------------------------------------------------- the work


def load(i: int) -> list[int]:
    time.sleep(random.uniform(0.01, 0.05))
    return list(range(i % 50))


def transform(xs: list[int]) -> int:
    time.sleep(random.uniform(0.02, 0.08))
    return sum(xs)


def summarize(*totals: int) -> int:
    time.sleep(0.05)
    return sum(totals)


async def keep_busy(client: Any, done: trio.Event) -> None:
    """Rounds of a three-stage graph until ``done``."""
    round_no = 0
    while not done.is_set():
        round_no += 1
        loads = await client.map(load, range(round_no * 1000, round_no * 1000 + 120), pure=False)
        totals = await client.map(transform, loads, pure=False)
        final = await client.submit(summarize, *totals, pure=False)
        with trio.move_on_after(30):
            await final
        del loads, totals, final


# ---------------------------------------------------------------- the browser


def drive_browser(url: str, screenshot: Path) -> dict[str, Any]:
    """Open the page, watch it change, save a screenshot; runs in a thread."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 820}, device_scale_factor=1)
            page.on("pageerror", lambda exc: out["errors"].append(f"page error: {exc}"))
            page.on("console", lambda msg: msg.type == "error" and out["errors"].append(f"console: {msg.text}"))
            page.goto(url, timeout=20_000)
            page.wait_for_function("() => document.body.dataset.status === 'live'", timeout=20_000)
            page.wait_for_function("() => document.querySelectorAll('#workers-body tr.wrow').length >= 2", timeout=20_000)
            out["worker_rows"] = page.locator("#workers-body tr.wrow").count()
            out["worker_names"] = sorted(page.locator("#workers-body td.name").all_inner_texts())
            page.wait_for_selector("#progress .prow", timeout=20_000)
            page.wait_for_function("() => Number(document.getElementById('stream').dataset.bars) > 0", timeout=20_000)

            def sample() -> dict[str, Any]:
                return page.evaluate(
                    """() => ({
                        seq: Number(document.body.dataset.seq),
                        bars: Number(document.getElementById('stream').dataset.bars),
                        prefixes: [...document.querySelectorAll('#progress .prow')].map(r => r.dataset.prefix),
                        progress: [...document.querySelectorAll('#progress .prow .pcount')].map(e => e.textContent).join('|'),
                        widths: [...document.querySelectorAll('#progress .prow .pbar span')].map(e => e.style.width).join('|'),
                        cards: document.getElementById('cards').innerText,
                    })"""
                )

            first = sample()
            page.wait_for_function(f"() => Number(document.body.dataset.seq) >= {first['seq'] + 6}", timeout=20_000)
            # Let the stream fill a little more for a telling screenshot.
            page.wait_for_timeout(5000)
            second = sample()
            out["first"], out["second"] = first, second
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            out["status"] = page.evaluate("() => document.body.dataset.status")
        finally:
            browser.close()
    return out


async def test_live_page_in_chromium(browser_ready: None, tmp_path: Path) -> None:
    shot = SCREENSHOT if os.environ.get("TRIOFLOW_UPDATE_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    with trio.fail_after(120):
        async with open_cluster(n_workers=2, threads_per_worker=2, memory_limit=2**30, dashboard_address="127.0.0.1:0") as cluster:
            port = cluster.scheduler.services["dashboard"]
            async with open_client(cluster) as client, trio.open_nursery() as nursery:
                done = trio.Event()
                nursery.start_soon(keep_busy, client, done)
                try:
                    result = await trio.to_thread.run_sync(drive_browser, f"http://127.0.0.1:{port}/status", shot)
                finally:
                    done.set()
                    nursery.cancel_scope.cancel()

    assert result["errors"] == []
    assert result["status"] == "live"
    assert result["worker_rows"] == 2
    assert result["worker_names"] == ["worker-0", "worker-1"]
    first, second = result["first"], result["second"]
    assert first["bars"] > 0 and second["bars"] > 0
    assert {"load", "transform"} & set(first["prefixes"] + second["prefixes"])
    assert second["seq"] > first["seq"]
    # The page changes while work runs: progress and the stream move.
    assert (first["progress"], first["widths"]) != (second["progress"], second["widths"]) or first["bars"] != second["bars"]
    assert first["cards"] != second["cards"]
    assert shot.stat().st_size > 10_000


def drive_restart(url: str, first_id: str, stop: Any, start: Any) -> dict[str, Any]:
    """Watch the page lose its scheduler and find the next one by itself."""
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {"errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda exc: out["errors"].append(f"page error: {exc}"))
            page.goto(url, timeout=20_000)
            page.wait_for_function("() => document.body.dataset.status === 'live'", timeout=20_000)
            out["first"] = page.evaluate("() => window.__trioflow.serverId")
            trio.from_thread.run(stop)
            page.wait_for_function("() => document.body.dataset.status === 'down'", timeout=20_000)
            out["banner"] = page.locator("#banner").inner_text()
            page.wait_for_timeout(1500)  # a retry or two fail while nobody listens
            out["attempts"] = page.evaluate("() => window.__trioflow.attempt")
            out["second_expected"] = trio.from_thread.run(start)
            page.wait_for_function("() => document.body.dataset.status === 'live'", timeout=30_000)
            page.wait_for_function(f"() => window.__trioflow.serverId === {out['second_expected']!r}", timeout=10_000)
            out["second"] = page.evaluate("() => window.__trioflow.serverId")
            out["banner_hidden"] = page.locator("#banner").is_hidden()
        finally:
            browser.close()
    return out


async def test_page_reconnects_when_the_scheduler_restarts(browser_ready: None) -> None:
    from trioflow import Scheduler

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = f"127.0.0.1:{port}"
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            first = Scheduler("tcp://127.0.0.1:0", dashboard_address=dashboard)
            await nursery.start(first.serve)
            second: list[Any] = []

            async def start() -> str:
                s = Scheduler("tcp://127.0.0.1:0", dashboard_address=dashboard)
                await nursery.start(s.serve)
                second.append(s)
                return s.id

            try:
                result = await trio.to_thread.run_sync(drive_restart, f"http://{dashboard}/status", first.id, first.aclose, start)
            finally:
                for s in [first, *second]:
                    await s.aclose()

    assert result["errors"] == []
    assert result["first"] == first.id
    assert "Lost the connection to the scheduler" in result["banner"]
    assert result["attempts"] >= 1
    assert result["second"] == result["second_expected"] == second[0].id != first.id
    assert result["banner_hidden"]
