"""Observing a real cluster (worker processes, headless Chromium): a story
across a worker's death, and the performance report."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import cloudpickle
import pytest
import trio
from support import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _answer() -> int:
    return 42


@pytest.mark.slow
@pytest.mark.trioflow_cluster(n_workers=2, processes=True)
async def test_story_after_a_worker_death_shows_both_runs(trioflow_cluster: Any, trioflow_client: Any) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(60):
        a = cluster.workers[0]
        x = await client.submit(_answer, workers=[a.worker_address], allow_other_workers=True)
        assert await x == 42
        dead_addr, dead_pid = a.worker_address, a.pid
        os.kill(dead_pid, signal.SIGKILL)
        await wait_until(lambda: dead_addr not in cluster.scheduler.state.workers, what="the scheduler to drop the worker", timeout=20)
        assert await x == 42
        story = await client.story(x)
        runs = [e for e in story if e[3] == "scheduler" and e[1] == "processing" and e[2] == "memory"]
        assert len(runs) == 2, story
        assert runs[0][5] == dead_addr and runs[1][5] != dead_addr


# ---------------------------------------------------------------- performance report


def _slow_load(i: int) -> list[int]:
    _spin(0.03)
    return list(range(1000 + i))


def _spin(seconds: float) -> None:
    import time

    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def _slow_total(xs: list[int]) -> int:
    return sum(xs)


@pytest.mark.slow
def test_performance_report_is_one_self_contained_page(tmp_path: Any) -> None:
    import importlib.util
    import re
    import subprocess
    from pathlib import Path

    from trioflow import Client, LocalCluster, get_task_stream, performance_report

    root = Path(__file__).resolve().parents[2]
    if not os.access("/usr/bin/chromium", os.X_OK) or importlib.util.find_spec("playwright") is None:
        subprocess.run([str(root / "scripts" / "ensure-browser")], check=True, capture_output=True, timeout=900)
        importlib.invalidate_caches()
    report = tmp_path / "report.html"
    with LocalCluster(n_workers=2, threads_per_worker=1, profile_interval=0.002, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        with get_task_stream(client) as ts, performance_report(filename=str(report), client=client):
            loads = client.map(_slow_load, range(8))
            totals = [client.submit(_slow_total, x) for x in loads]
            assert sum(client.gather(totals)) == sum(sum(range(1000 + i)) for i in range(8))
    assert {key for key in (r["key"].split("-")[0] for r in ts.data)} >= {"_slow_load", "_slow_total"}

    text = report.read_text()
    # One file: no URL of any kind, nothing loaded from elsewhere (outside
    # the code shown, which is this test's, escaped).
    code = re.search(r"<pre id='code'>(.*?)</pre>", text, re.S)
    assert code is not None and "test_performance_report_is_one_self_contained_page" in code.group(1)
    page_only = text.replace(code.group(0), "").replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?://|\bsrc=|<link\b|@import", page_only)

    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"], timeout=60_000)
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri(), timeout=20_000)
            prefixes = page.locator("#prefixes tr.prefix").all_inner_texts()
            bars = page.locator("#task-stream rect.task").count()
            frames = page.locator("#profile g").count()
            lines = page.locator("#memory polyline").count()
            # Zoom into the first frame below the root: the script works.
            page.locator("#profile g").nth(1).locator("rect").click()
        finally:
            browser.close()
    assert not errors, errors
    assert requests == [report.as_uri()], requests
    assert any("_slow_load" in row for row in prefixes) and any("_slow_total" in row for row in prefixes), prefixes
    assert bars >= 16
    assert frames > 2
    assert lines >= 4  # process and managed memory of each worker
