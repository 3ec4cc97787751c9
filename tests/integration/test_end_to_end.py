# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""End to end: a signed pull_request delivery becomes a tested commit with its statuses on GitHub.

Real parts: ``testfleet-webhook`` and two ``testfleet-worker`` processes on the real broker (a
topology of the test's own: ``e2e-<id>.events`` with a single active consumer, and
``e2e-<id>.tests``), ansible-runner running ``playbooks/jobs/scan.yml`` and
``playbooks/jobs/test.yml``, a local git repository cloned over ``file://``, the local log
store, and the fake GitHub (tests/fake_github/) that holds the pull request and records the
statuses. The flow: delivery -> webhook -> events -> scan job -> ``queued`` + test job ->
tests queue -> test job -> ``running`` (with the log link) -> ``success``; exactly these three
statuses, in that order, and the log in the store. The same with the broker restarted in the
middle, with the worker running the test killed (SIGKILL) and another one finishing it, and
after a cold start: the queued job lost with the broker's queue, ``testfleet scan --rebuild``
publishes it again.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import urllib.request
import time
import uuid

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker"))

from worker_helpers import WorkerProcess, free_port, git, wait_for  # noqa: E402  (tests/integration/worker)

from ansible_collections.testfleet.infra.plugins.module_utils import amqp  # noqa: E402
from ansible_collections.testfleet.infra.plugins.module_utils import statuses  # noqa: E402
from ansible_collections.testfleet.infra.plugins.module_utils.topology import ensure_queue, expand  # noqa: E402
from ansible_collections.testfleet.infra.programs.webhook.server import sign  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WEBHOOK_BIN = REPO_ROOT / "bin" / "testfleet-webhook"
REPO = "e2e-org/project"
CONTEXT = "debian-12/default"
PULL = 1


class Stack:
    """Webhook, workers, fake GitHub and a sample repository for one test."""

    def __init__(self, tmp_path, amqp_options, amqp_settings, github, test_script):
        self.tmp = tmp_path
        self.github = github
        self.settings = amqp_settings
        prefix = "e2e-%s" % uuid.uuid4().hex[:10]
        self.events, self.tests = prefix + ".events", prefix + ".tests"
        self.topology = {"exchange": prefix + ".x", "dead_letter_exchange": prefix + ".dlx",
                         "dead_letter_queue": prefix + ".dead", "delivery_limit": 5,
                         "queues": [{"name": self.events, "single_active_consumer": True}, self.tests]}
        connection = amqp.connect(amqp_settings, attempts=10, retry_delay=1.0)
        try:
            for queue in (self.events, self.tests):
                ensure_queue(connection.channel(), self.topology, queue)
        finally:
            if connection.is_open:
                connection.close()
        self.sha = self._make_repository(test_script)
        github.add_repo(REPO)
        github.add_pull(REPO, PULL, self.sha, author="alice", author_association="MEMBER")
        self.logs = tmp_path / "logs"
        self.secret = uuid.uuid4().hex
        (tmp_path / "hook-secret").write_text(self.secret + "\n")
        (tmp_path / "github-token").write_text(github.token + "\n")
        (tmp_path / "testmap.yml").write_text(yaml.safe_dump({
            "defaults": {"queue": self.tests, "timeout": 300},
            "allow": {"associations": ["MEMBER"]},
            "repos": {REPO: {"branches": {"main": [CONTEXT]}, "heads": False}}}))
        self.port = free_port()
        self.config = tmp_path / "config.yml"
        self.config.write_text(yaml.safe_dump({
            "amqp": dict(amqp_options),
            "webhook": {"listen": "127.0.0.1:%d" % self.port, "secret_files": [str(tmp_path / "hook-secret")],
                        "queue": self.events},
            "worker": {"queues": [self.events, self.tests], "default_timeout": 300, "work_dir": str(tmp_path / "work"),
                       "metrics_dir": str(tmp_path / "metrics"), "host_name": "e2e", "retry_delay": 1,
                       "log_flush_interval": 0.5, "upload_timeout": 20, "pull_check_interval": 1,
                       "clone_url": "file://%s/{repo}" % (tmp_path / "repos")},
            "log_store": {"url": "file://%s" % self.logs},
            "forge": {"api_url": github.url, "token_file": str(tmp_path / "github-token")},
            "testmap": str(tmp_path / "testmap.yml"),
            "topology": self.topology}))
        self.processes = []
        self.webhook = None

    def _make_repository(self, script):
        repo = self.tmp / "repos" / REPO
        (repo / ".testfleet").mkdir(parents=True)
        run = repo / ".testfleet" / "run"
        run.write_text(script)
        run.chmod(0o755)
        git(repo, "init", "-q")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "sample project")
        git(repo, "update-ref", "refs/pull/%d/head" % PULL, "HEAD")  # as GitHub keeps a PR's head
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                              text=True).stdout.strip()

    def start_webhook(self):
        with open(self.tmp / "webhook.log", "ab") as log:
            self.webhook = subprocess.Popen([sys.executable, str(WEBHOOK_BIN), "--config", str(self.config)],
                                            stdout=log, stderr=log)

        def healthy():
            try:
                return urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.port, timeout=2).status == 200
            except OSError:
                return False
        wait_for(healthy, 60, what="the webhook to be healthy")

    def config_for(self, queues):
        """A copy of the config whose worker consumes only ``queues``."""
        data = yaml.safe_load(self.config.read_text())
        data["worker"]["queues"] = list(queues)
        path = self.tmp / ("config-%d.yml" % len(list(self.tmp.glob("config-*.yml"))))
        path.write_text(yaml.safe_dump(data))
        return path

    def start_worker(self, slot, config=None):
        process = WorkerProcess(config or self.config, slot, self.tmp / ("worker-%d-%d.log" % (slot, len(self.processes))))
        self.processes.append(process)
        process.wait_log("connected to", timeout=60)
        return process

    def deliver_opened(self):
        """POST a signed pull_request/opened delivery for the pull request; return the answer."""
        pull = self.github._pull_body(REPO, self.github._repo(REPO)["pulls"][PULL], full=True)
        payload = {"action": "opened", "number": PULL, "pull_request": pull,
                   "repository": {"full_name": REPO, "name": REPO.split("/")[1]},
                   "sender": {"login": "alice"}}
        body = json.dumps(payload).encode()
        request = urllib.request.Request(
            "http://127.0.0.1:%d/webhook" % self.port, data=body, method="POST",
            headers={"Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                     "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sign(self.secret.encode(), body)})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())

    def kinds(self):
        """(GitHub state, vocabulary kind) of every status posted on the commit, oldest first."""
        found = []
        for status in self.github.statuses(REPO, self.sha, CONTEXT):
            parsed = statuses.parse(status)
            found.append((status["state"], parsed.kind if parsed else status.get("description")))
        return found

    def wait_kinds(self, wanted, timeout):
        end = time.monotonic() + timeout
        while self.kinds()[:len(wanted)] != wanted:
            if time.monotonic() > end:
                pytest.fail("timed out after %d s waiting for the statuses %s; have %s; worker logs:\n%s"
                            % (timeout, wanted, self.kinds(), self.worker_logs()))
            time.sleep(0.3)

    def worker_logs(self):
        return "\n".join(p.log[-2500:] for p in self.processes)

    def stop(self):
        for process in self.processes:
            process.stop()
        if self.webhook is not None and self.webhook.poll() is None:
            self.webhook.send_signal(signal.SIGTERM)
            self.webhook.wait(30)
        try:
            connection = amqp.connect(self.settings, attempts=30, retry_delay=1.0)
            channel = connection.channel()
            expanded = expand(self.topology)
            for queue in expanded["queues"]:
                channel.queue_delete(queue["name"])
            for exchange in expanded["exchanges"]:
                channel.exchange_delete(exchange["name"])
            connection.close()
        except Exception as exc:  # report, do not mask the test's own failure
            print("cleanup of the e2e topology failed: %s" % exc)


@pytest.fixture
def make_stack(tmp_path, amqp_options, amqp_settings, fake_github):
    made = []

    def make(test_script="#!/bin/sh\necho 'all 3 tests passed'\n"):
        stack = Stack(tmp_path, amqp_options, amqp_settings, fake_github, test_script)
        made.append(stack)
        return stack
    yield make
    for stack in made:
        stack.stop()


SUCCESS = [("pending", "queued"), ("pending", "running"), ("success", "success")]


def check_done(stack):
    """Exactly queued -> running -> success, the log link on running, the log in the store."""
    stack.wait_kinds(SUCCESS, 240)
    time.sleep(2)  # nothing more may come
    assert stack.kinds() == SUCCESS, stack.worker_logs()
    posted = stack.github.statuses(REPO, stack.sha, CONTEXT)
    running = statuses.parse(posted[1])
    assert running.host.startswith("e2e/")
    job_id = posted[1]["target_url"].rstrip("/").split("/")[-2]
    assert posted[1]["target_url"].endswith("/%s/log.html" % job_id)
    result = json.loads((stack.logs / job_id / "result.json").read_text())
    assert result["outcome"] == "success"
    assert "all 3 tests passed" in (stack.logs / job_id / "log").read_text()
    return job_id


def test_a_pull_request_delivery_ends_in_a_tested_commit(make_stack):
    stack = make_stack()
    stack.start_webhook()
    stack.start_worker(0)
    stack.start_worker(1)
    status, answer = stack.deliver_opened()
    assert status == 202 and answer["outcome"] == "queued"
    check_done(stack)


def test_a_redelivered_delivery_does_not_run_the_test_twice(make_stack):
    stack = make_stack()
    stack.start_webhook()
    stack.start_worker(0)
    stack.deliver_opened()
    check_done(stack)
    stack.deliver_opened()  # GitHub redelivers, or the PR gets another event at the same head
    time.sleep(8)
    assert stack.kinds() == SUCCESS


@pytest.mark.broker_restart
def test_the_broker_restarted_in_the_middle(make_stack, restart_broker):
    stack = make_stack("#!/bin/sh\nsleep 15\necho 'all 3 tests passed'\n")
    stack.start_webhook()
    stack.start_worker(0)
    stack.deliver_opened()
    stack.wait_kinds(SUCCESS[:2], 180)
    restart_broker()
    check_done(stack)


def test_the_worker_killed_mid_job(make_stack):
    stack = make_stack("#!/bin/sh\nsleep 20\necho 'all 3 tests passed'\n")
    stack.start_webhook()
    first = stack.start_worker(0)
    stack.deliver_opened()
    stack.wait_kinds(SUCCESS[:2], 180)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    stack.start_worker(1)
    # the second worker takes the redelivered job and runs it again: the same attempt keeps its
    # running status, then success
    job_id = check_done(stack)
    result = json.loads((stack.logs / job_id / "result.json").read_text())
    assert result["host"] == "e2e/1", stack.worker_logs()   # run again by the second worker
    running = statuses.parse(stack.github.statuses(REPO, stack.sha, CONTEXT)[1])
    assert running.host == "e2e/0"                          # the first worker's running status stays


def test_a_cold_start_rebuilds_the_lost_job(make_stack):
    stack = make_stack()
    stack.start_webhook()
    stack.start_worker(0, stack.config_for([stack.events]))   # scans only
    stack.deliver_opened()
    stack.wait_kinds(SUCCESS[:1], 120)
    wait_for(lambda: queue_depth(stack, stack.tests) == 1, 30, what="the test job in its queue")
    connection = amqp.connect(stack.settings, attempts=10, retry_delay=1.0)
    try:
        connection.channel().queue_purge(stack.tests)  # the broker lost it
    finally:
        connection.close()
    cli = subprocess.run([sys.executable, str(REPO_ROOT / "bin" / "testfleet"), "--config", str(stack.config),
                          "scan", "--rebuild", REPO], capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0, cli.stderr
    wait_for(lambda: queue_depth(stack, stack.tests) == 1, 120, what="the rebuilt test job")
    stack.start_worker(1, stack.config_for([stack.tests]))
    check_done(stack)


def queue_depth(stack, queue):
    connection = amqp.connect(stack.settings, attempts=10, retry_delay=1.0)
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def test_a_push_to_the_pull_request_supersedes_the_running_job(make_stack):
    stack = make_stack("#!/bin/sh\nsleep 120\necho 'too late'\n")
    stack.start_webhook()
    stack.start_worker(0)
    stack.deliver_opened()
    stack.wait_kinds(SUCCESS[:2], 180)
    moved = time.monotonic()
    stack.github.update_pull(REPO, PULL, head_sha="b" * 40)
    wanted = SUCCESS[:2] + [("error", "superseded")]
    stack.wait_kinds(wanted, 60)
    assert time.monotonic() - moved < 60
    time.sleep(2)
    assert stack.kinds() == wanted, stack.worker_logs()
    last = statuses.parse(stack.github.statuses(REPO, stack.sha, CONTEXT)[-1])
    assert "moved on to bbbbbbbbbbbb" in last.reason
    job_id = stack.github.statuses(REPO, stack.sha, CONTEXT)[1]["target_url"].rstrip("/").split("/")[-2]
    result = json.loads((stack.logs / job_id / "result.json").read_text())
    assert result["outcome"] == "superseded" and "too late" not in (stack.logs / job_id / "log").read_text()
