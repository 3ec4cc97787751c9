"""testfleet-worker on an events queue: webhook deliveries become scan jobs, ignored ones are acked,
invalid ones dead-lettered, and scans from a single-active-consumer queue never overlap.

The worker runs from a copy of the collection whose ``playbooks/jobs/scan.yml`` is the stand-in
``tests/fixtures/worker/playbooks/scan.yml`` (the real scan needs GitHub and a test map); every
other file is this checkout's, through symlinks.
"""

import datetime
import json
import os
import shutil
import signal
import uuid

import pytest

from worker_helpers import REPO_ROOT, Broker, WorkerProcess, job, read_result, wait_for, wait_result

pytestmark = pytest.mark.timeout(240)

FIXTURES = REPO_ROOT / "tests" / "fixtures"
SCAN_PLAYBOOK = FIXTURES / "worker" / "playbooks" / "scan.yml"


def delivery_body(event, payload, delivery_id):
    """A delivery as testfleet-webhook publishes it."""
    return json.dumps({"delivery": delivery_id, "event": event, "received_at": "2024-05-01T12:00:00Z",
                       "payload": payload}).encode()


def fixture_payload(event, name):
    return json.loads((FIXTURES / "webhooks" / event / name).read_text())


@pytest.fixture
def shadow_collection(tmp_path):
    """A collection tree like this checkout, with the stand-in scan playbook; returns its launcher."""
    root = tmp_path / "collections" / "ansible_collections" / "testfleet" / "infra"
    (root / "bin").mkdir(parents=True)
    (root / "playbooks" / "jobs").mkdir(parents=True)
    for entry in REPO_ROOT.iterdir():
        if entry.name not in ("bin", "playbooks", ".git", ".venv", ".ansible"):
            (root / entry.name).symlink_to(entry)
    for playbook in (REPO_ROOT / "playbooks" / "jobs").glob("*.yml"):
        if playbook.name != "scan.yml":
            (root / "playbooks" / "jobs" / playbook.name).symlink_to(playbook)
    (root / "playbooks" / "jobs" / "scan.yml").symlink_to(SCAN_PLAYBOOK)
    program = root / "bin" / "testfleet-worker"
    shutil.copy(REPO_ROOT / "bin" / "testfleet", program)  # a copy: it finds the collection from its own path
    return program


@pytest.fixture
def broker(amqp_settings):
    """The worker tests' topology plus an events queue (single active consumer) and a plain one."""
    prefix = "wt-%s" % uuid.uuid4().hex[:10]
    test_broker = Broker(amqp_settings, prefix, extra_queues=[
        {"name": prefix + ".events", "single_active_consumer": True},
        {"name": prefix + ".shared", "single_active_consumer": False}])
    test_broker.events_queue, test_broker.shared_queue = test_broker.extra_queues
    yield test_broker
    test_broker.delete()


@pytest.fixture
def start_worker(tmp_path, shadow_collection):
    started = []

    def start(config_path, slot=0, scan_seconds=0):
        process = WorkerProcess(config_path, slot, tmp_path / ("worker-%s-%d.log" % (slot, len(started))),
                                program=shadow_collection, env={"TESTFLEET_TEST_SCAN_SECONDS": str(scan_seconds)})
        started.append(process)
        process.wait_log("connected to", timeout=30)
        return process

    yield start
    for process in started:
        process.stop()


def publish_delivery(broker, queue, event, payload, delivery_id=None):
    delivery_id = delivery_id or str(uuid.uuid4())
    broker.publisher.publish(broker.topology["exchange"], queue, delivery_body(event, payload, delivery_id),
                             message_id=delivery_id)
    return delivery_id


def interval(result):
    parse = datetime.datetime.fromisoformat
    return parse(result["start"].replace("Z", "+00:00")), parse(result["end"].replace("Z", "+00:00"))


def test_deliveries_become_scan_jobs(tmp_path, broker, worker_setup, start_worker):
    make_config, dummy = worker_setup
    worker = start_worker(make_config(worker={"queues": [broker.events_queue]}))
    logs = tmp_path / "logs"

    opened = publish_delivery(broker, broker.events_queue, "pull_request", fixture_payload("pull_request", "opened.payload.json"))
    comment = publish_delivery(broker, broker.events_queue, "issue_comment", fixture_payload("issue_comment", "created.payload.json"))
    ping = publish_delivery(broker, broker.events_queue, "ping", fixture_payload("ping", "payload.json"))
    broken = publish_delivery(broker, broker.events_queue, "push", {"ref": "refs/heads/main", "repository": {}})
    scan = job("scan", repo="testfleet-example/widget", args={"trigger": "timer"})  # a plain scan job
    broker.publish(scan, queue=broker.events_queue)

    result = wait_result(logs, "gh-" + opened)
    assert result["outcome"] == "success", result
    assert result["job"] == {"version": 1, "id": "gh-" + opened, "kind": "scan", "repo": "testfleet-example/widget",
                             "pull": 42, "sha": "4c1e0f6d8a2b9e37f5d0c6a1b8e2f9d3c7a4b5e6",
                             "args": {"trigger": "pull_request/opened"}}
    log = (logs / ("gh-" + opened) / "log").read_text()
    assert "scan job gh-%s: repo=testfleet-example/widget pull=42 sha=4c1e0f6d8a2b" % opened in log

    result = wait_result(logs, "gh-" + comment)
    assert result["job"]["args"] == {"trigger": "issue_comment", "commands": [
        {"command": "retest", "contexts": ["freebsd-14/default"], "user": "bob-reviewer",
         "created_at": "2026-11-25T22:01:12Z"}]}
    assert wait_result(logs, scan["id"])["job"] == scan

    worker.wait_log("webhook delivery %s from %s: ignored, acked: ping: GitHub checks the hook" % (ping, broker.events_queue))
    worker.wait_log("webhook delivery %s from %s: pull_request opened: scan pull request testfleet-example/widget#42"
                    % (opened, broker.events_queue))
    assert read_result(logs, "gh-" + ping) is None  # nothing ran for it

    # the malformed delivery is dead-lettered with the reason, as it was sent
    dead = wait_for(lambda: broker.get(broker.dead_letter_queue), 20, what="the malformed delivery in the dead-letter queue")
    properties, body = dead
    assert properties.message_id == broken
    assert properties.headers["x-testfleet-reason"] == (
        "invalid webhook delivery: payload.repository.full_name (the repository) is missing or not a string")
    assert properties.headers["x-testfleet-queue"] == broker.events_queue
    assert json.loads(body)["delivery"] == broken
    wait_for(lambda: broker.count(broker.events_queue) == 0, 10, what="an empty events queue")
    assert broker.get(broker.dead_letter_queue) is None

    text = (tmp_path / "metrics" / "testfleet-worker-0.prom").read_text()
    assert 'testfleet_worker_jobs_total{host="wtest",slot="0",kind="scan",outcome="success"} 3' in text
    assert 'testfleet_worker_jobs_total{host="wtest",slot="0",kind="delivery",outcome="ignored"} 1' in text
    assert 'testfleet_worker_jobs_total{host="wtest",slot="0",kind="unknown",outcome="invalid"} 1' in text


def test_a_delivery_sent_again_makes_the_same_job(tmp_path, broker, worker_setup, start_worker):
    """GitHub's redelivery (a new message with the same delivery id) makes the same job id: it is
    scanned again (scans are idempotent) into the same log folder."""
    make_config, dummy = worker_setup
    start_worker(make_config(worker={"queues": [broker.events_queue]}))
    payload = fixture_payload("pull_request", "synchronize.payload.json")
    delivery_id = publish_delivery(broker, broker.events_queue, "pull_request", payload)
    first = wait_result(tmp_path / "logs", "gh-" + delivery_id)
    publish_delivery(broker, broker.events_queue, "pull_request", payload, delivery_id=delivery_id)
    wait_for(lambda: read_result(tmp_path / "logs", "gh-" + delivery_id)["start"] != first["start"], 60,
             what="the second run of the redelivered delivery")
    assert sorted(os.listdir(tmp_path / "logs")) == ["gh-" + delivery_id]


@pytest.mark.parametrize("single_active_consumer", [True, False])
def test_scans_from_a_single_active_consumer_queue_never_overlap(
        tmp_path, broker, worker_setup, start_worker, single_active_consumer):
    """Worker A consumes the events queue and another queue (it pauses the other queues while a job
    runs) and is stopped during its first scan; worker B consumes the events queue only. With the
    single active consumer the scans run one after the other; without it (the control) they overlap."""
    make_config, dummy = worker_setup
    queue = broker.events_queue if single_active_consumer else broker.shared_queue
    a = start_worker(make_config("a.yml", worker={"queues": [queue, broker.queue], "host_name": "a"}), slot=0, scan_seconds=3)
    b = start_worker(make_config("b.yml", worker={"queues": [queue], "host_name": "b"}), slot=1, scan_seconds=3)
    payload = fixture_payload("pull_request", "opened.payload.json")
    first = publish_delivery(broker, queue, "pull_request", payload)
    a.wait_log("job gh-%s (scan) from %s: started" % (first, queue), timeout=60)  # A is the active consumer
    later = [publish_delivery(broker, queue, "pull_request", payload) for dummy in range(2)]
    a.signal(signal.SIGTERM)  # A drains: it finishes its scan and exits
    results = [wait_result(tmp_path / "logs", "gh-" + d, timeout=120) for d in [first] + later]
    assert a.wait(60) == 0
    assert "stopping: taking no new job; the current job finishes first" in a.log
    assert [r["outcome"] for r in results] == ["success"] * 3
    assert results[0]["host"] == "a/0"
    spans = sorted(interval(r) for r in results)
    overlaps = [(x, y) for x, y in zip(spans, spans[1:]) if y[0] < x[1]]
    if single_active_consumer:
        assert overlaps == [], spans
        assert [r["host"] for r in results[1:]] == ["b/1", "b/1"]
    else:
        assert overlaps, spans  # the control: without the argument, B starts while A still scans
    assert broker.count(queue) == 0
