"""cli.py without a broker: the command line, tables, dead-letter descriptions, the jobs it makes."""

import datetime
import json
import subprocess

import pika
import pytest

from ansible_collections.testfleet.infra.programs.cli import broker, errors, scan_jobs
from ansible_collections.testfleet.infra.programs.cli import commands as cli

from ansible_collections.testfleet.infra.plugins.module_utils import jobs

NOW = datetime.datetime(2024, 5, 1, 12, 30, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("argv,expected", [
    (["queues"], {"command": "queues", "json": False}),
    (["--json", "queues"], {"command": "queues", "json": True}),
    (["queues", "--json"], {"command": "queues", "json": True}),
    (["jobs", "tests.public"], {"queue": "tests.public", "limit": 20, "peek": False}),
    (["jobs", "events", "--limit", "5", "--peek"], {"queue": "events", "limit": 5, "peek": True}),
    (["dead-letters", "--limit", "3"], {"limit": 3}),
    (["replay", "--all"], {"all": True, "ids": []}),
    (["replay", "a-1", "b-2"], {"all": False, "ids": ["a-1", "b-2"]}),
    (["retest", "acme/widget", "42"], {"repo": "acme/widget", "pull": 42, "contexts": [], "queue": None}),
    (["retest", "acme/widget", "42", "debian-12/default", "--queue", "ev"],
     {"contexts": ["debian-12/default"], "queue": "ev"}),
    (["scan"], {"repos": [], "trigger": "operator"}),
    (["scan", "a/b", "c/d", "--trigger", "timer"], {"repos": ["a/b", "c/d"], "trigger": "timer"}),
    (["--config", "/x.yml", "scan"], {"config": "/x.yml"}),
])
def test_parse_args(argv, expected):
    args = vars(cli.parse_args(argv))
    for key, value in expected.items():
        assert args[key] == value, key


def test_the_config_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("TESTFLEET_CONFIG", "/etc/testfleet/worker.yml")
    assert cli.parse_args(["queues"]).config == "/etc/testfleet/worker.yml"
    monkeypatch.delenv("TESTFLEET_CONFIG")
    assert cli.parse_args(["queues"]).config == "/etc/testfleet/config.yml"


@pytest.mark.parametrize("argv,problem", [
    ([], "the following arguments are required: COMMAND"),
    (["launch"], "invalid choice: 'launch'"),
    (["jobs"], "the following arguments are required: QUEUE"),
    (["jobs", "q", "--limit", "0"], "must be from 1 to 10000"),
    (["jobs", "q", "--limit", "many"], "must be a whole number"),
    (["retest", "widget", "1"], "'widget' is not a repository as OWNER/NAME"),
    (["retest", "a/b", "x"], "'x' is not a pull request number"),
    (["retest", "a/b", "0"], "'0' is not a pull request number"),
    (["scan", "--trigger", "Timer!"], "a trigger is a short lower-case word"),
])
def test_usage_errors(argv, problem):
    with pytest.raises(errors.UsageError) as info:
        cli.parse_args(argv)
    assert problem in str(info.value)


def test_usage_and_config_errors_exit_2(tmp_path, capsys):
    assert cli.run(["jobs"]) == 2
    assert "the following arguments are required: QUEUE" in capsys.readouterr().err
    assert cli.run(["--config", str(tmp_path / "missing.yml"), "queues"]) == 2
    assert "cannot read the config file %s" % (tmp_path / "missing.yml") in capsys.readouterr().err
    bad = tmp_path / "bad.yml"
    bad.write_text("amqp:\n  url: amqp://u@127.0.0.1/\n  pasword_file: /x\n")
    assert cli.run(["--config", str(bad), "queues"]) == 2
    assert "amqp: unknown key 'pasword_file' (did you mean 'password_file'?)" in capsys.readouterr().err


def test_broker_trouble_exits_1_without_the_password(tmp_path, capsys):
    config = tmp_path / "config.yml"
    config.write_text("amqp:\n  url: amqp://ops:S3cretPassw0rd@127.0.0.1:1/ci\n")
    assert cli.run(["--config", str(config), "queues"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("testfleet: cannot reach the broker at amqp://ops:********@127.0.0.1:1/ci")
    assert "S3cretPassw0rd" not in err


def test_format_table():
    rows = [{"a": "x", "b": None, "c": True}, {"a": "longer value", "b": 12, "c": False}]
    assert cli.format_table(rows, [("a", "A"), ("b", "BEE"), ("c", "C")]) == (
        "A             BEE  C\n"
        "x             -    yes\n"
        "longer value  12   no")
    assert cli.format_table([{"a": "0123456789\nmore"}], [("a", "A")], widths={"a": 8}) == "A\n01234..."


def properties(**fields):
    return pika.BasicProperties(**fields)


def test_describe_a_job_the_worker_dead_lettered():
    job = {"version": 1, "id": "t-1", "kind": "test", "repo": "o/r", "sha": "a" * 40, "context": "c",
           "args": {"secrets": {"TOKEN": "tok-123"}}}
    info = broker.describe_message(properties(message_id="t-1", headers={
        "x-testfleet-reason": "invalid job: field 'kind' names no job playbook", "x-testfleet-queue": "tests.public",
        "x-testfleet-worker": "w/0"}), json.dumps(job).encode())
    assert {k: info[k] for k in ("id", "kind", "repo", "queue", "reason", "replayed", "body")} == {
        "id": "t-1", "kind": "test", "repo": "o/r", "queue": "tests.public",
        "reason": "invalid job: field 'kind' names no job playbook", "replayed": 0, "body": None}
    assert info["job"]["args"]["secrets"] == {"TOKEN": "********"}  # never shown


def test_describe_a_job_the_broker_dead_lettered():
    # the headers RabbitMQ 3.10 sets when a quorum queue's delivery limit is reached
    headers = {"x-death": [{"count": 2, "reason": "delivery_limit", "queue": "images",
                            "time": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc),
                            "exchange": "testfleet", "routing-keys": [b"images"]}],
               "x-first-death-queue": "images", "x-first-death-reason": "delivery_limit", "x-delivery-count": 0}
    info = broker.describe_message(properties(headers=headers), b'{"version": 1, "id": "i-1", "kind": "image-refresh"}')
    assert (info["id"], info["kind"], info["queue"]) == ("i-1", "image-refresh", "images")
    assert info["reason"] == "delivered too often (the queue's delivery limit) (dead-lettered 2 times)"


def test_describe_a_delivery_and_a_broken_message():
    delivery = {"delivery": "d-1", "event": "push", "received_at": "x", "payload": {"repository": {"full_name": "o/r"}}}
    info = broker.describe_message(properties(message_id="d-1", headers={"x-testfleet-reason": "invalid webhook delivery: x",
                                                                         "x-testfleet-queue": "events"}),
                                   json.dumps(delivery).encode())
    assert (info["id"], info["kind"], info["repo"], info["queue"]) == ("d-1", "delivery:push", "o/r", "events")
    info = broker.describe_message(properties(headers={"x-first-death-queue": b"q", "x-first-death-reason": b"rejected"}),
                                   b"{not json")
    assert (info["id"], info["kind"], info["queue"], info["reason"], info["job"], info["body"]) == (
        None, None, "q", "rejected without requeue", None, "{not json")


def test_replay_headers_drop_the_dead_lettering_and_count_replays():
    headers = {"x-death": [], "x-first-death-queue": "q", "x-first-death-reason": "rejected", "x-first-death-exchange": "",
               "x-delivery-count": 3, "x-testfleet-reason": "r", "x-testfleet-queue": "q", "x-testfleet-worker": "w",
               "x-testfleet-publish-seq": 9}
    assert broker.replay_headers(headers) == {"x-testfleet-publish-seq": 9, "x-testfleet-replayed": 1}
    assert broker.replay_headers({"x-testfleet-replayed": 1})["x-testfleet-replayed"] == 2
    assert broker.replay_headers(None) == {"x-testfleet-replayed": 1}


def test_scan_and_retest_jobs(monkeypatch):
    monkeypatch.setattr(scan_jobs.getpass, "getuser", lambda: "ops person")
    scan = scan_jobs.scan_job("acme/widget", "timer", NOW)
    assert jobs.validate_job(scan) is scan
    assert scan["id"].startswith("scan-timer-20240501T123000Z-acme_widget-")
    assert {k: v for k, v in scan.items() if k != "id"} == {"version": 1, "kind": "scan", "repo": "acme/widget",
                                                            "args": {"trigger": "timer"}}
    assert scan_jobs.scan_job("acme/widget", "timer", NOW)["id"] != scan["id"]
    long_repo = "o" * 39 + "/" + "n" * 100
    assert len(scan_jobs.scan_job(long_repo, "operator", NOW)["id"]) == 128

    retest = scan_jobs.retest_job("acme/widget", 42, ["debian-12/default"], now=NOW)
    assert retest["id"].startswith("retest-20240501T123000Z-acme_widget-42-")
    assert {k: v for k, v in retest.items() if k != "id"} == {
        "version": 1, "kind": "scan", "repo": "acme/widget", "pull": 42,
        "args": {"trigger": "operator", "commands": [
            {"command": "retest", "contexts": ["debian-12/default"], "user": "operator:ops_person",
             "created_at": "2024-05-01T12:30:00Z"}]}}


def test_scan_fresh_and_rebuild():
    assert scan_jobs.scan_job("acme/widget", "operator", NOW, fresh=True)["args"] == {"trigger": "operator", "fresh": True}
    assert scan_jobs.scan_job("acme/widget", "operator", NOW, rebuild=True)["args"] == {"trigger": "operator", "rebuild": True}
    args = cli.parse_args(["--config", "c.yml", "scan", "--rebuild", "acme/widget"])
    assert args.rebuild is True and args.fresh is False and args.repos == ["acme/widget"]


def test_scan_without_repositories_needs_a_test_map(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("amqp:\n  url: amqp://127.0.0.1:1/\n")
    from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
    with pytest.raises(errors.UsageError) as info:
        scan_jobs.configured_repos(config_lib.load(str(config)))
    assert "names no testmap: give the repositories" in str(info.value)


class FakeRun:
    """Stands in for subprocess.run with rabbitmq-queues peek's answers (recorded from 3.10.8)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.commands = []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        returncode, stdout, stderr = self.answers.pop(0)
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)


def test_peek_reads_positions_until_the_queue_ends():
    first = {"message": {"delivery_mode": 2, "exchange": "testfleet", "header.x-delivery-count": 1, "message_id": "a-1",
                         "payload (max 64 bytes)": '{"args":{},"id":"a-1","kind":"noop","version":1}'}, "result": "ok"}
    second = {"message": {"header.x-delivery-count": 0, "message_id": "b-2",
                          "payload (max 64 bytes)": '{"args":{"secrets":{"TOKEN":"tok-1'}, "result": "ok"}
    run = FakeRun([(0, json.dumps(first) + "\n", ""), (0, json.dumps(second), ""),
                   (69, "", '{"message":"Target queue does not have a message at that position","result":"error"}')])
    rows = broker.peek("tests.public", "ci", 5, run=run)
    assert run.commands[0] == ["rabbitmq-queues", "peek", "--vhost", "ci", "tests.public", "1", "--formatter", "json"]
    assert len(run.commands) == 3
    assert rows == [
        {"position": 1, "id": "a-1", "deliveries": 1, "kind": "noop", "body_start": first["message"]["payload (max 64 bytes)"]},
        {"position": 2, "id": "b-2", "deliveries": 0, "kind": None, "body_start": '{"args":{"secrets": (hidden)'}]


def test_peek_failures():
    with pytest.raises(errors.CommandFailed, match="peek failed .exit 69.: .*Target queue was not found"):
        broker.peek("q", "/", 2, run=FakeRun([(69, "", '{"message":"Target queue was not found in virtual host","result":"error"}')]))

    def missing(command, **kwargs):
        raise FileNotFoundError(command[0])
    with pytest.raises(errors.CommandFailed, match="--peek needs rabbitmq-queues"):
        broker.peek("q", "/", 2, run=missing)


def test_scan_repositories_come_from_the_test_map(tmp_path):
    pytest.importorskip("ansible_collections.testfleet.infra.plugins.module_utils.testmap")
    from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
    (tmp_path / "testmap.yml").write_text(
        "repos:\n"
        "  acme/widget:\n    branches:\n      main: [debian-12/default]\n"
        "  acme/gadget:\n    branches:\n      main: [debian-12/default]\n")
    config = tmp_path / "config.yml"
    config.write_text("testmap: testmap.yml\n")
    assert scan_jobs.configured_repos(config_lib.load(str(config))) == ["acme/widget", "acme/gadget"]
    (tmp_path / "testmap.yml").write_text("repos: [acme/widget]\n")
    with pytest.raises(errors.UsageError) as info:
        scan_jobs.configured_repos(config_lib.load(str(config)))
    assert str(tmp_path / "testmap.yml") in str(info.value)
