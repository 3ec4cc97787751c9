"""log.html in a real headless Chromium, driven through the DevTools protocol.

The page is served by a local HTTP server, once with Range support (as S3 answers: 206 and
416) and once without (Python's http.server answers 200 with the whole file). The test grows
the log and then writes the outcome, and checks that the page follows both.
"""

import asyncio
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from worker_helpers import free_port

from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed (apt-get install -y chromium); "
                                                "scripts/bootstrap --for-tests installs it"),
    pytest.mark.timeout(120),
]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; with ``ranges`` it answers ``Range: bytes=N-`` like S3 (206, or 416)."""

    ranges = False
    requests = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        match = re.match(r"^bytes=(\d+)-$", self.headers.get("Range") or "")
        path = self.translate_path(self.path)
        if not self.ranges or not match or not os.path.isfile(path):
            return super().do_GET()
        with open(path, "rb") as handle:
            data = handle.read()
        start = int(match.group(1))
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", "bytes */%d" % len(data))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        return None


@pytest.fixture
def log_server(request, tmp_path):
    """``(root, base URL, requests)`` of an HTTP server; with Range support unless the test's
    parameter (indirect) is ``plain``."""
    root = tmp_path / "logs"
    root.mkdir()
    ranges = getattr(request, "param", "ranges") == "ranges"
    handler = type("Handler", (RangeHandler,), {"ranges": ranges, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, "http://127.0.0.1:%d" % server.server_address[1], handler.requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium with the DevTools protocol on a free port; yields the port."""
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                             "--user-data-dir=%s" % profile, "--remote-debugging-address=127.0.0.1",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        assert proc.poll() is None, "chromium exited with %s" % proc.returncode
        assert time.monotonic() < deadline, "chromium did not start its DevTools server"
        time.sleep(0.1)
    yield int(port_file.read_text().split()[0])
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Page:
    """The smallest DevTools client: one page, Runtime.evaluate."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=30)
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait(self, expression, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                body = await self.evaluate("document.body ? document.body.innerText : ''")
                pytest.fail("timed out waiting for %s in the page; it shows:\n%s" % (expression, body))
            await asyncio.sleep(0.2)


async def _open_page(port, url):
    import aiohttp

    session = aiohttp.ClientSession()
    async with session.get("http://127.0.0.1:%d/json/list" % port) as response:
        targets = await response.json(content_type=None)
    target = [t for t in targets if t.get("type") == "page"][0]
    ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
    page = Page(ws)
    await page.call("Page.enable")
    await page.call("Page.navigate", url=url)
    return session, ws, page


def write_result(folder, **fields):
    result = {"job": {"id": "job-1", "kind": "test", "repo": "acme/project", "sha": "a" * 40, "context": "debian-12/default"},
              "host": "worker-1/0", "start": job_run.utc_now_iso(), "outcome": "running", "reason": None, "retry": False}
    result.update(fields)
    (folder / "result.json.tmp").write_text(json.dumps(result))
    os.replace(folder / "result.json.tmp", folder / "result.json")


@pytest.mark.parametrize("log_server", ["ranges", "plain"], indirect=True)
def test_log_html_follows_the_log_and_shows_the_outcome(log_server, chromium):
    root, base, requests = log_server
    folder = root / "job-1"
    folder.mkdir()
    (folder / "log.html").write_text(logstore.viewer_html())
    (folder / "log").write_text("first line\n<script>window.injected = true</script>\n")
    write_result(folder)

    async def scenario():
        session, ws, page = await _open_page(chromium, base + "/job-1/log.html")
        try:
            log_text = "document.getElementById('log').textContent"
            await page.wait("%s.includes('first line')" % log_text)
            assert await page.evaluate("document.getElementById('outcome').textContent") == "running"
            assert (await page.evaluate("document.getElementById('meta').textContent")).startswith("test")
            # the log's content is text, never markup
            assert await page.evaluate("window.injected === undefined && document.scripts.length === 1") is True
            with open(folder / "log", "a") as handle:
                handle.write("second line \u00e9t\u00e9\n")
            await page.wait("%s.includes('second line \u00e9t\u00e9')" % log_text)
            with open(folder / "log", "a") as handle:
                handle.write("last line\n")
            write_result(folder, outcome="failure", reason="task 'Run the tests' failed: non-zero return code (rc 1)",
                         end=job_run.utc_now_iso(), duration=12.5)
            await page.wait("document.body.getAttribute('data-done') === 'true'")
            assert await page.evaluate("document.getElementById('outcome').textContent") == "failure"
            assert await page.evaluate("document.getElementById('outcome').className") == "failure"
            assert "rc 1" in await page.evaluate("document.getElementById('reason').textContent")
            text = await page.evaluate(log_text)
            # every line exactly once, in order
            assert text == ("first line\n<script>window.injected = true</script>\nsecond line \u00e9t\u00e9\nlast line\n")
        finally:
            await ws.close()
            await session.close()

    asyncio.run(scenario())
    log_requests = [rng for path, rng in requests if path.endswith("/log")]
    assert len(log_requests) >= 3
    assert any(rng and rng.startswith("bytes=") for rng in log_requests)


def test_log_html_keeps_following_a_requeued_job(log_server, chromium):
    """An error that will be retried is not final: the page goes on until the rerun's outcome."""
    root, base, requests = log_server
    folder = root / "job-1"
    folder.mkdir()
    (folder / "log.html").write_text(logstore.viewer_html())
    (folder / "log").write_text("attempt one, a long first line\n")
    write_result(folder, outcome="error", retry=True, reason="the worker was stopped during the job; the job was requeued")

    async def scenario():
        session, ws, page = await _open_page(chromium, base + "/job-1/log.html")
        try:
            await page.wait("document.getElementById('outcome').textContent === 'error (will be retried)'")
            # the rerun starts a new, shorter log: the page starts over
            (folder / "log").write_text("attempt 2\n")
            write_result(folder)
            await page.wait("document.getElementById('log').textContent === 'attempt 2\\n'")
            write_result(folder, outcome="success", end=job_run.utc_now_iso(), duration=3.0)
            await page.wait("document.body.getAttribute('data-done') === 'true'")
            assert await page.evaluate("document.getElementById('outcome').textContent") == "success"
        finally:
            await ws.close()
            await session.close()

    asyncio.run(scenario())
