"""Fixtures of the webhook's integration tests: the real program on real HTTP, the real broker.

``start_webhook(**webhook_keys)`` runs ``bin/testfleet-webhook --config FILE`` in its own process
with a throw-away topology (unique names, deleted afterwards) and returns a :class:`Webhook`
handle: its URL, its secrets, ``post()`` to send a signed delivery and ``log_lines()`` to read
its JSON log. ``deliveries`` are the fixture deliveries: the project's own
(``tests/fixtures/webhooks/``) and the real ones of ``../shared/fixtures/github-webhooks/`` when
that folder exists.
"""

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.config import DEFAULT_EVENTS
from ansible_collections.testfleet.infra.plugins.module_utils.topology import expand
from ansible_collections.testfleet.infra.programs.webhook.server import sign

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
PROGRAM = REPO_ROOT / "bin" / "testfleet-webhook"
FIXTURE_DIRS = [REPO_ROOT / "tests" / "fixtures" / "webhooks",
                REPO_ROOT.parent / "shared" / "fixtures" / "github-webhooks"]


class Delivery:
    """One fixture delivery: ``event``, raw ``body`` bytes, and whether the default filter queues it."""

    def __init__(self, event, path):
        self.event = event
        self.path = path
        self.body = path.read_bytes()
        self.payload = json.loads(self.body)
        actions = DEFAULT_EVENTS.get(event, ())
        self.queued = event in DEFAULT_EVENTS and (actions is None or self.payload.get("action") in actions)

    def __repr__(self):
        return "%s/%s" % (self.path.parent.parent.name, self.path.relative_to(self.path.parent.parent))


def load_deliveries():
    found = []
    for folder in FIXTURE_DIRS:
        if folder.is_dir():
            for path in sorted(folder.glob("*/*.json")):
                found.append(Delivery(path.parent.name, path))
    return found


@pytest.fixture(scope="session")
def deliveries():
    found = load_deliveries()
    assert any(d.queued for d in found) and any(not d.queued for d in found)
    return found


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Answer %d %r>" % (self.status, self.body[:200])


class Webhook:
    """A running testfleet-webhook process."""

    def __init__(self, workdir, settings, description, webhook_keys, amqp_section):
        self.workdir = workdir
        self.description = description
        self.queue = webhook_keys["queue"]
        self.secrets = [uuid.uuid4().hex.encode("ascii") for dummy in range(2)]
        self.secret_files = []
        for index, secret in enumerate(self.secrets):
            path = workdir / ("secret-%d" % index)
            path.write_bytes(secret + b"\n")
            path.chmod(0o600)
            self.secret_files.append(str(path))
        self.port = free_port()
        keys = {"listen": "127.0.0.1:%d" % self.port, "secret_files": self.secret_files}
        keys.update(webhook_keys)
        self.config = workdir / "config.yml"
        self.config.write_text(json.dumps({"amqp": amqp_section, "webhook": keys,
                                           "topology": description}))
        self.base = "http://127.0.0.1:%d" % self.port
        self.url = self.base + keys.get("path", "/webhook")
        self.log = workdir / "webhook.log"
        self.process = None

    def start(self, wait=True):
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(PROGRAM), "--config", str(self.config)],
                                            stdout=log, stderr=log)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=60, healthy=True):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the webhook exited: %s" % self.log.read_text()
            try:
                answer = self.get("/healthz")
            except OSError:
                answer = None
            if answer is not None and (answer.status == 200 or not healthy):
                return
            time.sleep(0.1)
        raise AssertionError("the webhook did not become ready: %s" % self.log.read_text())

    def run_program(self, *args):
        """Run ``testfleet-webhook --config <this config> ARGS`` to the end (CompletedProcess)."""
        return subprocess.run([sys.executable, str(PROGRAM), "--config", str(self.config)] + list(args),
                              capture_output=True, text=True, check=False, timeout=120)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def request(self, method, path, body=None, headers=None, timeout=30):
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return Answer(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, error.read())

    def get(self, path):
        return self.request("GET", path)

    def headers(self, event, body, delivery=None, secret=None, content_type="application/json"):
        headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
                   "X-Hub-Signature-256": sign(secret or self.secrets[0], body),
                   "User-Agent": "GitHub-Hookshot/test"}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def post(self, event, body, delivery=None, secret=None, content_type="application/json",
             **overrides):
        """POST a delivery signed with ``secret`` (default: the first); ``overrides`` replace
        or (with None) remove headers, e.g. ``**{"X-Hub-Signature-256": None}``."""
        headers = self.headers(event, body, delivery, secret, content_type)
        for name, value in overrides.items():
            name = name.replace("_", "-")
            if value is None:
                headers.pop(name, None)
            else:
                headers[name] = value
        return self.request("POST", self.url[len(self.base):], body, headers)

    def log_lines(self):
        lines = []
        for line in self.log.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"unparsed": line})
        return lines


class Queue:
    """Reads the webhook's queue through a connection of its own."""

    def __init__(self, settings, name):
        self.settings = settings
        self.name = name

    def drain(self):
        """Take every message; return ``(properties, body dict)`` pairs in queue order."""
        connection = amqp.connect(self.settings, attempts=10, retry_delay=1.0)
        taken = []
        try:
            channel = connection.channel()
            while True:
                method, properties, body = channel.basic_get(self.name, auto_ack=True)
                if method is None:
                    return taken
                taken.append((properties, json.loads(body)))
        finally:
            connection.close()

    def purge(self):
        connection = amqp.connect(self.settings, attempts=10, retry_delay=1.0)
        try:
            connection.channel().queue_purge(self.name)
        finally:
            connection.close()


@pytest.fixture
def start_webhook(tmp_path_factory, amqp_settings, amqp_options, prefix, cleanup):
    """Start a webhook (``start_webhook(**webhook_section_keys)``) on a fresh topology."""
    started = []

    def start(wait=True, amqp_url=None, **webhook_keys):
        run = "%sw%d." % (prefix, len(started))
        description = {"exchange": run + "x", "dead_letter_exchange": run + "dlx",
                       "dead_letter_queue": run + "dead", "queues": [run + "events"]}
        expanded = expand(description)
        cleanup["queues"].update(q["name"] for q in expanded["queues"])
        cleanup["exchanges"].update(e["name"] for e in expanded["exchanges"])
        webhook_keys.setdefault("queue", run + "events")
        webhook = Webhook(tmp_path_factory.mktemp("webhook"), amqp_settings, description,
                          webhook_keys, {"url": amqp_url} if amqp_url else amqp_options)
        webhook.amqp_queue = Queue(amqp_settings, webhook.queue)
        started.append(webhook)
        return webhook.start(wait=wait)

    yield start
    for webhook in started:
        webhook.stop()


@pytest.fixture
def webhook(start_webhook):
    """A webhook with the default settings."""
    return start_webhook()
