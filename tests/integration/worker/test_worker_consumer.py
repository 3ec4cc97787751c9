"""testfleet-worker against the real broker, real ansible-runner and real playbooks."""

import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from worker_helpers import job, read_result, wait_for, wait_result

pytestmark = pytest.mark.timeout(180)


def metrics_text(tmp_path, slot=0):
    path = tmp_path / "metrics" / ("testfleet-worker-%s.prom" % slot)
    return path.read_text() if path.exists() else ""


def test_jobs_run_and_invalid_jobs_are_dead_lettered(tmp_path, broker, worker_setup):
    make_config, start = worker_setup
    worker = start(make_config())
    ok, failing = job("noop"), job("noop", args={"fail": "the test failed"})
    broker.publish(b"{not json", raw=True)
    broker.publish(json.dumps({"version": 1, "id": "x-1", "kind": "no-such-kind"}).encode(), raw=True)
    broker.publish(ok)
    broker.publish(failing)
    logs = tmp_path / "logs"

    result = wait_result(logs, ok["id"])
    assert result["outcome"] == "success", result
    assert result["host"] == "wtest/0"
    assert result["job"] == ok
    assert result["reason"] is None
    for key in ("start", "end", "duration", "first_task"):
        assert result[key], key
    assert sorted(os.listdir(logs / ok["id"])) == ["attachments", "log", "log.html", "result.json"] or \
        sorted(os.listdir(logs / ok["id"])) == ["log", "log.html", "result.json"]
    assert "TASK [Say what runs]" in (logs / ok["id"] / "log").read_text()

    result = wait_result(logs, failing["id"])
    assert result["outcome"] == "failure"
    assert result["reason"] == "task 'Fail as the job asks' failed: the test failed"
    assert result["retry"] is False

    # the invalid ones are in the dead-letter queue with the reason, the queue is empty
    dead = [broker.get(broker.dead_letter_queue) for dummy in range(2)]
    reasons = sorted(properties.headers["x-testfleet-reason"] for properties, body in dead)
    assert "is not valid JSON" in reasons[0]
    assert reasons[1].startswith("invalid job: field 'kind' names no job playbook")
    assert b"{not json" in [body for properties, body in dead]
    assert broker.get(broker.dead_letter_queue) is None
    wait_for(lambda: broker.count() == 0, 10, what="an empty work queue")

    text = metrics_text(tmp_path)
    assert 'testfleet_worker_jobs_total{host="wtest",slot="0",kind="noop",outcome="success"} 1' in text
    assert 'testfleet_worker_jobs_total{host="wtest",slot="0",kind="noop",outcome="failure"} 1' in text
    assert 'testfleet_worker_jobs_total{host="wtest",slot="0",kind="unknown",outcome="invalid"} 2' in text
    assert 'testfleet_worker_job_duration_seconds_count{host="wtest",slot="0",kind="noop"} 2' in text
    # the private data dirs are gone
    assert os.listdir(tmp_path / "work" / "slot-0") == []
    worker.stop()
    assert worker.proc.returncode == 0


def test_test_job_clones_runs_entry_point_and_stores_attachments(tmp_path, broker, worker_setup, make_repo):
    make_config, start = worker_setup
    url, sha = make_repo(
        "#!/bin/sh\n"
        "echo \"testing on $TEST_OS ($TEST_CONTEXT) in $(pwd)\"\n"
        "echo 'a report' > \"$TESTFLEET_ATTACHMENTS_DIR/report.txt\"\n"
        "mkdir -p \"$TESTFLEET_ATTACHMENTS_DIR/sub\" && echo nested > \"$TESTFLEET_ATTACHMENTS_DIR/sub/n.txt\"\n"
        "echo \"extra=$EXTRA\"\n"
        "test -f README && echo 'tests passed'\n",
        files={"README": "hello\n"})
    bad_url, bad_sha = make_repo("#!/bin/sh\necho 'test_foo FAILED' >&2\nexit 3\n", name="broken")
    start(make_config())
    good = job("test", repo="acme/project", sha=sha, context="debian-12/default",
               args={"clone_url": url, "env": {"EXTRA": "yes"}})
    bad = job("test", repo="acme/broken", sha=bad_sha, context="fedora-40/default", args={"clone_url": bad_url})
    missing = job("test", repo="acme/project", sha="0" * 40, context="debian-12/default", args={"clone_url": url})
    for spec in (good, bad):
        broker.publish(spec)
    logs = tmp_path / "logs"

    result = wait_result(logs, good["id"])
    assert result["outcome"] == "success", (logs / good["id"] / "log").read_text()
    log = (logs / good["id"] / "log").read_text()
    assert "testing on debian-12 (debian-12/default) in " in log
    assert "extra=yes" in log
    assert "tests passed" in log
    assert (logs / good["id"] / "attachments" / "report.txt").read_text() == "a report\n"
    assert (logs / good["id"] / "attachments" / "sub" / "n.txt").read_text() == "nested\n"

    result = wait_result(logs, bad["id"])
    assert result["outcome"] == "failure"
    assert result["reason"] == "task 'Run the tests' failed: non-zero return code (rc 3)"
    assert "test_foo FAILED" in (logs / bad["id"] / "log").read_text()
    wait_for(lambda: broker.count() == 0, 10, what="an empty work queue")
    assert broker.count(broker.dead_letter_queue) == 0

    # a commit that cannot be cloned is an infrastructure error: retried, then dead-lettered
    broker.publish(missing)
    wait_for(lambda: broker.count(broker.dead_letter_queue) == 1, 60, what="the unclonable job in the dead-letter queue")
    result = read_result(logs, missing["id"])
    assert result["outcome"] == "error" and result["retry"] is True
    assert result["reason"].startswith("task 'Clone the repository at the commit' failed")
    assert result["worker"]["delivery"] == 4  # the first delivery and 3 more: the delivery limit


def test_secrets_never_reach_the_store(tmp_path, broker, worker_setup, make_repo):
    make_config, start = worker_setup
    secret = "tok-7c1a5f0e9b2d4e68"
    url, sha = make_repo("#!/bin/sh\necho \"token=$API_TOKEN\"\necho \"$API_TOKEN\" > \"$TESTFLEET_ATTACHMENTS_DIR/t.txt\"\n"
                         "printf '%s' \"$API_TOKEN\" | cut -c1-8\nprintf 'x%.0s' $(seq 5000); printf '%s\\n' \"$API_TOKEN\"\n"
                         "exit 1\n")
    start(make_config())
    spec = job("test", repo="acme/project", sha=sha, context="debian-12/default",
               args={"clone_url": url, "secrets": {"API_TOKEN": secret}})
    broker.publish(spec)
    logs = tmp_path / "logs"
    result = wait_result(logs, spec["id"])
    assert result["outcome"] == "failure"
    assert result["job"]["args"]["secrets"] == {"API_TOKEN": "********"}
    log = (logs / spec["id"] / "log").read_text()
    assert "token=********" in log
    stored = list((logs / spec["id"]).rglob("*"))
    assert len([p for p in stored if p.is_file()]) >= 4
    for path in stored:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in worker_log_text(tmp_path)


def worker_log_text(tmp_path):
    return "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))


def test_one_job_at_a_time_across_two_queues(tmp_path, broker, worker_setup):
    """Prefetch 1 is per consumer: a worker on two queues takes no second job while one runs."""
    make_config, start = worker_setup
    start(make_config(worker={"queues": [broker.queue, broker.other_queue]}))
    first, second = job("noop", args={"sleep": 3}), job("noop")
    broker.publish(first)
    wait_result(tmp_path / "logs", first["id"], final=False)
    broker.publish(second, queue=broker.other_queue)
    time.sleep(1)
    assert read_result(tmp_path / "logs", first["id"])["outcome"] == "running"
    assert broker.count(broker.other_queue) == 1  # still ready for another worker, not held here
    assert wait_result(tmp_path / "logs", first["id"])["outcome"] == "success"
    assert wait_result(tmp_path / "logs", second["id"])["outcome"] == "success"
    assert broker.count(broker.other_queue) == 0


def test_job_timeout_stops_the_playbook(tmp_path, broker, worker_setup):
    make_config, start = worker_setup
    start(make_config())
    spec = job("noop", timeout=2, args={"sleep": 60})
    broker.publish(spec)
    result = wait_result(tmp_path / "logs", spec["id"], timeout=30)
    assert result["outcome"] == "error"
    assert result["reason"] == "timed out after 2 s"
    assert result["retry"] is False
    assert result["duration"] < 10
    assert "[testfleet-worker wtest/0: timed out after 2 s]" in (tmp_path / "logs" / spec["id"] / "log").read_text()
    wait_for(lambda: broker.count() == 0, 10, what="the timed-out job acked")
    assert broker.count(broker.dead_letter_queue) == 0


def playbook_processes(marker):
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout.split()
    return [int(pid) for pid in out if int(pid) != os.getpid()]


def test_sigkill_mid_job_redelivers_to_another_worker(tmp_path, broker, worker_setup):
    make_config, start = worker_setup
    first = start(make_config(worker={"work_dir": str(tmp_path / "work-a")}), slot=1)
    spec = job("noop", args={"sleep": 6})
    broker.publish(spec)
    logs = tmp_path / "logs"
    running = wait_result(logs, spec["id"], final=False)
    assert running["outcome"] == "running" and running["host"] == "wtest/1"
    first.wait_log("running noop.yml")
    wait_for(lambda: playbook_processes(str(tmp_path / "work-a")), 10, what="the job's ansible-playbook")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    # the orphaned playbook notices its worker is gone and stops itself
    wait_for(lambda: not playbook_processes(str(tmp_path / "work-a")), 10, what="the orphaned playbook to stop")

    start(make_config(name="b.yml", worker={"work_dir": str(tmp_path / "work-b")}), slot=2)
    result = wait_result(logs, spec["id"], timeout=60)
    assert result["outcome"] == "success"
    assert result["host"] == "wtest/2"
    assert result["worker"]["delivery"] == 2
    log = (logs / spec["id"] / "log").read_text()
    assert "on wtest/2" in log and "on wtest/1" not in log
    wait_for(lambda: broker.count() == 0, 10, what="the job acked")


def test_sigterm_drains_then_exits_and_a_second_sigterm_requeues(tmp_path, broker, worker_setup):
    make_config, start = worker_setup
    config = make_config()
    worker = start(config)
    first, second = job("noop", args={"sleep": 3}), job("noop")
    broker.publish(first)
    broker.publish(second)
    logs = tmp_path / "logs"
    wait_result(logs, first["id"], final=False)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert read_result(logs, first["id"])["outcome"] == "success"
    assert read_result(logs, second["id"]) is None
    assert broker.count() == 1  # the second job was not taken

    worker = start(config)
    result = wait_result(logs, second["id"])
    assert result["outcome"] == "success"
    long_job = job("noop", args={"sleep": 60})
    broker.publish(long_job)
    wait_result(logs, long_job["id"], final=False)
    worker.wait_log("running noop.yml (timeout 60 s")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    time.sleep(1)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert time.monotonic() - started < 15
    result = read_result(logs, long_job["id"])
    assert result["outcome"] == "error" and result["retry"] is True
    assert "the worker was stopped" in result["reason"]
    assert broker.count() == 1  # requeued
    assert broker.count(broker.dead_letter_queue) == 0
    properties, body = broker.get(broker.queue)
    assert json.loads(body)["id"] == long_job["id"]
    assert properties.headers["x-delivery-count"] == 1


def test_long_job_keeps_its_delivery_with_short_heartbeats(tmp_path, broker, worker_setup):
    make_config, start = worker_setup
    worker = start(make_config(amqp={"heartbeat": 2}))
    spec = job("noop", args={"sleep": 8})  # more than 3 heartbeat intervals
    broker.publish(spec)
    result = wait_result(tmp_path / "logs", spec["id"], timeout=60)
    assert result["outcome"] == "success"
    assert result["worker"]["delivery"] == 1
    time.sleep(3)
    assert "lost the broker connection" not in worker.log
    assert broker.count() == 0
    assert 'testfleet_worker_reconnects_total{host="wtest",slot="0"} 0' in metrics_text(tmp_path)


def test_reconnects_after_the_broker_goes_away_without_busy_looping(tmp_path, broker, worker_setup, broker_proxy):
    proxy, url = broker_proxy
    make_config, start = worker_setup
    worker = start(make_config(amqp={"url": url}))
    accepted = proxy.accepted
    proxy.down()
    worker.wait_log("lost the broker connection", timeout=20)
    time.sleep(6)
    attempts = worker.log.count("next attempt in")
    assert 1 <= attempts <= 5, worker.log  # 1 s, 2 s, 4 s ...: no busy loop
    assert proxy.accepted == accepted
    proxy.up()
    wait_for(lambda: worker.log.count("connected to") >= 2, 40, what="the reconnection")
    spec = job("noop")
    broker.publish(spec)
    assert wait_result(tmp_path / "logs", spec["id"])["outcome"] == "success"
    assert 'testfleet_worker_reconnects_total{host="wtest",slot="0"} 1' in metrics_text(tmp_path)


def test_s3_log_store_grows_while_the_job_runs(tmp_path, broker, worker_setup, make_repo, moto_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="ci-logs")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    url, sha = make_repo("#!/bin/sh\necho 'first line'\nsleep 4\necho 'last line'\n")
    make_config, start = worker_setup
    start(make_config(log_store={"url": "s3://ci-logs/logs", "endpoint_url": moto_server,
                                 "public_url": "https://logs.example.org/logs"}))
    spec = job("test", repo="acme/project", sha=sha, context="debian-12/default", args={"clone_url": url})
    broker.publish(spec)

    def get(name):
        try:
            return s3.get_object(Bucket="ci-logs", Key="logs/%s/%s" % (spec["id"], name))["Body"].read().decode()
        except s3.exceptions.NoSuchKey:
            return None

    # the log is in the store before the job ends
    wait_for(lambda: "first line" in (get("log") or ""), 30, what="the live log in S3")
    assert json.loads(get("result.json"))["outcome"] == "running"
    assert "last line" not in get("log")
    result = wait_for(lambda: get("result.json") if '"running"' not in (get("result.json") or '"running"') else None, 30,
                      what="the final result in S3")
    result = json.loads(result)
    assert result["outcome"] == "success"
    assert result["log_url"] == "https://logs.example.org/logs/%s/log.html" % spec["id"]
    assert "last line" in get("log")
    assert get("log.html").startswith("<!DOCTYPE html>")
    head = s3.head_object(Bucket="ci-logs", Key="logs/%s/log" % spec["id"])
    assert head["ContentType"].startswith("text/plain")


def test_a_broken_store_never_fails_the_job(tmp_path, broker, worker_setup):
    make_config, start = worker_setup
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    worker = start(make_config(log_store={"url": "file://%s/logs" % blocker}, worker={"upload_timeout": 2}))
    spec = job("noop")
    broker.publish(spec)
    worker.wait_log("job %s: success" % spec["id"], timeout=60)
    assert "its log folder could not be stored" in worker.log
    wait_for(lambda: broker.count() == 0, 10, what="the job acked")
    assert broker.count(broker.dead_letter_queue) == 0
    wait_for(lambda: 'testfleet_worker_log_upload_failures_total{host="wtest",slot="0"} 1' in metrics_text(tmp_path), 10,
             what="the upload failure metric")
    kept = list((tmp_path / "work" / "unsent").iterdir())
    assert len(kept) == 1 and (kept[0] / "log").exists() and (kept[0] / "result.json").exists()


def test_a_person_runs_the_same_job_with_one_command(tmp_path, collections_path):
    """The README's command: the same playbook, the same log folder, no broker."""
    job_file = tmp_path / "job.json"
    spec = job("noop", args={"sleep": 0})
    job_file.write_text(json.dumps(spec))
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="testfleet.infra.job_log", ANSIBLE_COLLECTIONS_PATH=collections_path,
               TESTFLEET_SPOOL_DIR=str(tmp_path / "spool"))
    env["PATH"] = os.pathsep.join([os.path.dirname(os.path.realpath(os.sys.executable)), os.path.dirname(os.sys.executable), env["PATH"]])
    proc = subprocess.run(["ansible-playbook", "testfleet.infra.jobs.noop", "-e", "@%s" % job_file], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = tmp_path / "testfleet-logs" / spec["id"]
    assert "testfleet job log: %s/log.html (outcome: success)" % folder in proc.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["log", "log.html", "result.json"]
    result = json.loads((folder / "result.json").read_text())
    assert result["outcome"] == "success" and result["job"] == spec
    assert pathlib.Path(folder / "log").read_text().count("TASK [") == 4
