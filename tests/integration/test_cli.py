"""The operator CLI `testfleet` against the real broker, on a throw-away topology per test."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from ansible_collections.testfleet.infra.programs.cli import scan_jobs
from ansible_collections.testfleet.infra.programs.cli import commands as cli

from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils.amqp import ConfirmedPublisher
from ansible_collections.testfleet.infra.plugins.module_utils.topology import ensure_queue, expand

LAUNCHER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bin", "testfleet")


@pytest.fixture
def config(tmp_path, amqp_options, topology):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"amqp": amqp_options, "topology": topology}))
    return str(path)


@pytest.fixture
def names(topology):
    expanded = expand(topology)
    return {"work": expanded["queues"][1]["name"], "other": expanded["queues"][2]["name"],
            "dead": expanded["queues"][0]["name"], "exchange": topology["exchange"],
            "dlx": topology["dead_letter_exchange"]}


@pytest.fixture
def declared(broker, topology, names):
    for queue in (names["work"], names["other"]):
        ensure_queue(broker.channel(), topology, queue)
    return names


def run(capsys, config, *argv):
    capsys.readouterr()
    code = cli.run(["--config", config] + list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, config, *argv):
    code, out, err = run(capsys, config, "--json", *argv)
    assert code == 0, err
    return json.loads(out)


def job(job_id, **fields):
    return dict({"version": 1, "id": job_id, "kind": "noop"}, **fields)


def publish(broker, exchange, routing_key, spec, headers=None):
    body = spec if isinstance(spec, bytes) else jobs.encode_job(spec)
    ConfirmedPublisher(broker).publish(exchange, routing_key, body,
                                       message_id=None if isinstance(spec, bytes) else spec["id"], headers=headers)


def take(broker, queue):
    """Consume one message (acked): (properties, body) or None."""
    channel = broker.channel()
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    channel.close()
    return None if method is None else (properties, body)


def test_queues(capsys, config, broker, topology, names):
    ensure_queue(broker.channel(), topology, names["work"])  # "other" stays missing
    for number in range(2):
        publish(broker, names["exchange"], names["work"], job("q-%d" % number))
    rows = run_json(capsys, config, "queues")["queues"]
    assert rows == [
        {"queue": names["dead"], "role": "dead letters", "exists": True, "ready": 0, "consumers": 0,
         "delivery_limit": None, "single_active_consumer": False, "differs": []},
        {"queue": names["work"], "role": "work", "exists": True, "ready": 2, "consumers": 0,
         "delivery_limit": 2, "single_active_consumer": False, "differs": []},
        {"queue": names["other"], "role": "work", "exists": False, "ready": None, "consumers": None,
         "delivery_limit": 4, "single_active_consumer": False, "differs": None},
    ]
    code, out, err = run(capsys, config, "queues")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "CONSUMERS", "DELIVERY", "LIMIT", "SINGLE", "ACTIVE", "ROLE"]
    assert lines[2].split() == [names["work"], "2", "0", "2", "no", "work"]
    assert lines[-1] == "missing on the broker (apply the topology): %s" % names["other"]


def test_queues_shows_a_queue_that_differs_from_the_topology(capsys, tmp_path, amqp_options, broker, topology, names):
    ensure_queue(broker.channel(), topology, names["work"])
    wanted = dict(topology, queues=[{"name": names["work"], "single_active_consumer": True}])
    path = tmp_path / "wanted.yml"
    path.write_text(yaml.safe_dump({"amqp": amqp_options, "topology": wanted}))
    rows = run_json(capsys, str(path), "queues")["queues"]
    assert rows[1]["differs"] == ["x-single-active-consumer"] and rows[1]["single_active_consumer"] is True
    code, out, err = run(capsys, str(path), "queues")
    assert out.splitlines()[-1] == ("%s differs from the topology on the broker in x-single-active-consumer: "
                                    "amqp_topology explains how to migrate it" % names["work"])


def delivery_count(broker, queue):
    """Consume the next message of ``queue`` and return its x-delivery-count (0 when never returned)."""
    taken = take(broker, queue)
    assert taken is not None
    return int((taken[0].headers or {}).get("x-delivery-count") or 0)


def test_jobs_of_a_work_queue_are_counted_not_read(capsys, config, broker, declared):
    publish(broker, declared["exchange"], declared["work"], job("w-1"))
    for dummy in range(3):  # more reads than the queue's delivery limit (2)
        document = run_json(capsys, config, "jobs", declared["work"])
        assert document == {"queue": declared["work"], "ready": 1, "consumers": 0, "delivery_limit": 2,
                            "jobs": None, "note": cli.COUNTS_ONLY_NOTE}
    code, out, err = run(capsys, config, "jobs", declared["work"])
    assert out.splitlines()[0] == "queue %s: 1 ready, 0 consumers, delivery limit 2" % declared["work"]
    assert "counts as a delivery" in out
    assert take(broker, declared["dead"]) is None
    assert delivery_count(broker, declared["work"]) == 0


def can_peek(vhost):
    if shutil.which("rabbitmq-queues") is None:
        return False
    done = subprocess.run(["rabbitmq-queues", "peek", "--vhost", vhost, "no-such-queue", "1"],
                          capture_output=True, text=True, timeout=60, check=False)
    return "was not found" in done.stdout + done.stderr  # the node answered


def test_jobs_peek_lists_jobs_without_a_delivery(capsys, config, broker, declared, vhost):
    if not can_peek(vhost):
        pytest.skip("rabbitmq-queues cannot reach the broker's node from here")
    for number in range(3):
        publish(broker, declared["exchange"], declared["work"], job("p-%d" % number))
    for dummy in range(3):
        document = run_json(capsys, config, "jobs", declared["work"], "--peek", "--limit", "2")
    assert document["ready"] == 3
    assert [(r["position"], r["id"], r["deliveries"]) for r in document["jobs"]] == [(1, "p-0", 0), (2, "p-1", 0)]
    assert document["jobs"][0]["body_start"].startswith('{"id":"p-0"')
    assert document["jobs"][0]["kind"] == "noop"
    code, out, err = run(capsys, config, "jobs", declared["work"], "--peek")
    assert code == 0 and out.splitlines()[-1] == "3 of 3 shown (rabbitmq-queues peek)"
    assert [delivery_count(broker, declared["work"]) for dummy in range(3)] == [0, 0, 0]


def make_dead_letters(broker, names):
    """Three dead letters, as they arise: the broker's delivery limit, the worker, and unknown."""
    publish(broker, names["exchange"], names["work"], job("limit-1", args={"secrets": {"T": "tok-77"}}))
    channel = broker.channel()
    for dummy in range(3):  # the first delivery and 2 more (the limit): dead-lettered by the broker
        deadline = time.monotonic() + 10
        while True:
            method, properties, body = channel.basic_get(names["work"], auto_ack=False)
            if method is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=True)
    channel.close()
    # what the worker does with an invalid job (worker.py _dead_letter)
    publish(broker, names["dlx"], names["other"], job("worker-2", kind="no-such-kind"), headers={
        "x-testfleet-reason": "invalid job: field 'kind' names no job playbook", "x-testfleet-queue": names["other"],
        "x-testfleet-worker": "w/0"})
    publish(broker, names["dlx"], "", b"stray", headers=None)
    deadline = time.monotonic() + 10
    while broker.channel().queue_declare(names["dead"], passive=True).method.message_count < 3:
        assert time.monotonic() < deadline, "the dead letters did not arrive"
        time.sleep(0.05)


def test_dead_letters_are_read_without_consuming_them(capsys, config, broker, declared, inspect):
    make_dead_letters(broker, declared)
    first = run_json(capsys, config, "dead-letters")
    assert first["ready"] == 3
    rows = dict((r["id"], r) for r in first["dead_letters"])
    assert set(rows) == {"limit-1", "worker-2", None}
    assert (rows["limit-1"]["queue"], rows["limit-1"]["reason"], rows["limit-1"]["kind"]) == (
        declared["work"], "delivered too often (the queue's delivery limit)", "noop")
    assert rows["limit-1"]["job"]["args"]["secrets"] == {"T": "********"}
    assert (rows["worker-2"]["queue"], rows["worker-2"]["reason"]) == (
        declared["other"], "invalid job: field 'kind' names no job playbook")
    assert (rows[None]["queue"], rows[None]["reason"], rows[None]["body"]) == (None, None, "stray")
    assert run_json(capsys, config, "dead-letters") == first  # the same again: nothing was consumed
    assert inspect.message_count(declared["dead"], expected=3) == 3
    limited = run_json(capsys, config, "dead-letters", "--limit", "1")
    assert len(limited["dead_letters"]) == 1 and limited["ready"] == 3
    code, out, err = run(capsys, config, "dead-letters")
    assert out.splitlines()[0].split() == ["ID", "KIND", "QUEUE", "REASON"]
    assert out.splitlines()[-1] == "3 of 3 dead letters shown (queue %s)" % declared["dead"]
    assert "tok-77" not in out

    # jobs of the dead-letter queue: the same listing (a partial read moved one message to the
    # back: RabbitMQ puts a requeued message of a quorum queue at the end)
    def by_id(rows):
        return sorted(rows, key=lambda r: str(r["id"]))

    assert by_id(run_json(capsys, config, "jobs", declared["dead"])["dead_letters"]) == by_id(first["dead_letters"])


def test_replay(capsys, config, broker, declared, inspect):
    make_dead_letters(broker, declared)
    code, out, err = run(capsys, config, "replay", "worker-2")
    assert code == 0, err
    assert out.splitlines()[1].split()[:4] == ["worker-2", "no-such-kind", declared["other"], "yes"]
    properties, body = take(broker, declared["other"])
    assert json.loads(body)["id"] == "worker-2" and properties.message_id == "worker-2"
    assert properties.headers["x-testfleet-replayed"] == 1
    assert "x-testfleet-reason" not in properties.headers and "x-testfleet-queue" not in properties.headers
    assert inspect.message_count(declared["dead"], expected=2) == 2

    code, out, err = run(capsys, config, "replay", "nope")
    assert code == 1 and out.splitlines()[-1] == "not in the dead-letter queue: nope"
    assert inspect.message_count(declared["dead"], expected=2) == 2

    code, out, err = run(capsys, config, "--json", "replay", "--all")
    assert code == 1  # the stray message has no original queue
    document = json.loads(out)
    assert [r["id"] for r in document["replayed"]] == ["limit-1"]
    assert document["failed"] == [{"id": None, "kind": None, "queue": None, "replayed": False, "problem":
                                   "its original queue (unknown: no x-testfleet-queue or x-death header) is not a "
                                   "work queue of the topology"}]
    properties, body = take(broker, declared["work"])
    assert json.loads(body)["id"] == "limit-1"
    assert int(properties.headers.get("x-delivery-count") or 0) == 0  # a fresh start
    assert "x-death" not in properties.headers
    assert inspect.message_count(declared["dead"], expected=1) == 1
    assert take(broker, declared["dead"])[1] == b"stray"


def test_retest_and_scan_publish_scan_jobs(capsys, tmp_path, config, broker, declared, monkeypatch):
    monkeypatch.setattr(scan_jobs.getpass, "getuser", lambda: "ops")
    code, out, err = run(capsys, config, "retest", "acme/widget", "42", "debian-12/default", "--queue", declared["work"])
    assert code == 0, err
    properties, body = take(broker, declared["work"])
    retest = jobs.decode_job(body)
    assert properties.message_id == retest["id"] and properties.delivery_mode == 2
    assert (retest["kind"], retest["repo"], retest["pull"]) == ("scan", "acme/widget", 42)
    command = retest["args"]["commands"][0]
    assert retest["args"] == {"trigger": "operator", "commands": [
        {"command": "retest", "contexts": ["debian-12/default"], "user": "operator:ops", "created_at": command["created_at"]}]}
    assert command["created_at"].endswith("Z") and len(command["created_at"]) == 20
    assert out.splitlines()[1].split() == ["JOB", "REPO", "PULL", "QUEUE"]
    assert out.splitlines()[2].split() == [retest["id"], "acme/widget", "42", declared["work"]]

    document = run_json(capsys, config, "scan", "acme/widget", "acme/gadget", "--trigger", "timer", "--queue", declared["work"])
    published = [jobs.decode_job(take(broker, declared["work"])[1]) for dummy in range(2)]
    assert published == document["published"]
    assert [(j["repo"], j["args"]) for j in published] == [("acme/widget", {"trigger": "timer"}),
                                                           ("acme/gadget", {"trigger": "timer"})]
    assert all("pull" not in j and "sha" not in j and "ref" not in j for j in published)

    # by default, every repository of the config's test map
    (tmp_path / "testmap.yml").write_text("repos:\n  acme/widget:\n    branches:\n      main: [debian-12/default]\n"
                                          "  acme/gadget:\n    branches:\n      main: [debian-12/default]\n")
    with_map = tmp_path / "with-testmap.yml"
    with_map.write_text(yaml.safe_dump(dict(yaml.safe_load(open(config).read()), testmap="testmap.yml")))
    document = run_json(capsys, str(with_map), "scan", "--queue", declared["work"])
    assert [jobs.decode_job(take(broker, declared["work"])[1])["repo"] for dummy in range(2)] == ["acme/widget", "acme/gadget"]
    assert [j["args"] for j in document["published"]] == [{"trigger": "operator"}] * 2

    # the default queue is the config's webhook.queue (events), not in this topology
    code, out, err = run(capsys, config, "scan", "acme/widget")
    assert code == 2 and "'events' is not a queue of the topology" in err
    code, out, err = run(capsys, config, "retest", "acme/widget", "1", "bad context!", "--queue", declared["work"])
    assert code == 2 and "'bad context!' is not a context name" in err
    assert take(broker, declared["work"]) is None


def test_the_launcher(config, declared):
    done = subprocess.run([sys.executable, LAUNCHER, "--config", config, "--json", "queues"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert [r["queue"] for r in json.loads(done.stdout)["queues"]] == [declared["dead"], declared["work"], declared["other"]]


def test_a_refused_login_exits_1_without_the_password(capsys, tmp_path, wrong_password_url, topology):
    path = tmp_path / "wrong.yml"
    path.write_text(yaml.safe_dump({"amqp": {"url": wrong_password_url}, "topology": topology}))
    code, out, err = run(capsys, str(path), "queues")
    assert code == 1 and out == ""
    assert err.startswith("testfleet: the broker at amqp://guest:********@") and "refused" in err
    assert "Wr0ng-Pa55word" not in err
