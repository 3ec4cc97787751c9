"""testfleet-worker's config, metrics and outcome decisions (no broker: see tests/integration/worker)."""

import json

import pytest
import yaml

from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore
from ansible_collections.testfleet.infra.programs.worker import consumer as worker_lib
from ansible_collections.testfleet.infra.programs.worker import job as worker_job
from ansible_collections.testfleet.infra.programs.worker.metrics import Metrics


def write(tmp_path, data):
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_config_defaults_and_worker_keys(tmp_path):
    cfg = worker_lib.load_config(write(tmp_path, {
        "worker": {"queues": ["tests.public"], "work_dir": "work", "drain_timeout": 600, "retry_delay": 0},
        "log_store": {"url": "s3://logs/ci", "endpoint_url": "http://127.0.0.1:9000", "region": "eu-west-1"},
    }))
    assert cfg.worker["queues"] == ["tests.public"]
    assert cfg.worker["slots"] == 1 and cfg.worker["default_timeout"] == 7200
    assert cfg.worker["work_dir"].endswith("/work")
    assert cfg.worker["drain_timeout"] == 600.0 and cfg.worker["retry_delay"] == 0.0
    assert cfg.worker["metrics_dir"] == "/var/lib/testfleet/metrics"
    assert cfg.worker["clone_url"] == "https://github.com/{repo}.git"
    assert cfg.log_store["region"] == "eu-west-1"
    assert cfg.log_store["url"] == "s3://logs/ci"


@pytest.mark.parametrize("worker, message", [
    ({"queues": ["tests.public"], "drain_timeout": -1}, "worker.drain_timeout must be a positive number"),
    ({"queues": ["tests.public"], "log_flush_bytes": "many"}, "worker.log_flush_bytes must be a positive integer"),
    ({"queues": ["tests.public"], "work_dirr": "/x"}, "unknown key 'work_dirr'"),
    ({"queues": ["no-such-queue"]}, "'no-such-queue' is not a work queue of the topology"),
    ({}, "worker.queues is required"),
])
def test_config_errors_name_the_key(tmp_path, worker, message):
    path = write(tmp_path, {"worker": worker, "log_store": {"url": "file:///tmp/logs"}})
    with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(")):
        worker_lib.load_config(path)


def test_metrics_textfile(tmp_path):
    clock = iter(range(100, 1000)).__next__
    metrics = Metrics(str(tmp_path / "m" / "testfleet-worker-0.prom"), "host-1", 0, clock=clock)
    metrics.job_started("job-1", "test")
    text = (tmp_path / "m" / "testfleet-worker-0.prom").read_text()
    assert 'testfleet_worker_current_job_info{host="host-1",slot="0",job="job-1",kind="test"} 1' in text
    assert 'testfleet_worker_busy{host="host-1",slot="0"} 1' in text
    metrics.job_finished("test", "success", 12.5)
    metrics.job_finished("test", "failure", 4000.0)
    text = metrics.render()
    assert 'testfleet_worker_jobs_total{host="host-1",slot="0",kind="test",outcome="success"} 1' in text
    assert 'testfleet_worker_job_duration_seconds_bucket{host="host-1",slot="0",kind="test",le="15"} 1' in text
    assert 'testfleet_worker_job_duration_seconds_bucket{host="host-1",slot="0",kind="test",le="7200"} 2' in text
    assert 'testfleet_worker_job_duration_seconds_bucket{host="host-1",slot="0",kind="test",le="+Inf"} 2' in text
    assert 'testfleet_worker_job_duration_seconds_sum{host="host-1",slot="0",kind="test"} 4012.5' in text
    assert "testfleet_worker_current_job_info{" not in text
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["testfleet-worker-0.prom"]


def test_metrics_write_failure_is_not_raised(tmp_path):
    (tmp_path / "file").write_text("")
    metrics = Metrics(str(tmp_path / "file" / "x.prom"), "h", 0)
    metrics.write()
    assert "cannot write the metrics file" in metrics.write_error


def settings(tmp_path):
    return worker_job.JobSettings(work_dir=str(tmp_path), host="h", slot=0, store=logstore.LocalStore(str(tmp_path / "logs")),
                                  store_settings={}, default_timeout=60)


@pytest.mark.parametrize("local, cancel, outcome, action, retry", [
    ({"outcome": "success"}, None, "success", "ack", False),
    ({"outcome": "failure", "reason": "tests failed"}, None, "failure", "ack", False),
    ({"outcome": "error", "reason": "clone failed", "retry": True}, None, "error", "requeue", True),
    (None, None, "error", "requeue", True),  # the playbook gave no outcome: infrastructure
    ({"outcome": "success"}, "timeout", "error", "ack", False),
    (None, "stop", "error", "requeue", True),
])
def test_outcome_decisions(tmp_path, local, cancel, outcome, action, retry):
    run = worker_job.JobRun({"version": 1, "id": "j-1", "kind": "noop", "timeout": 5}, settings(tmp_path), delivery=2)
    run.cancel_reason = cancel
    spool = logstore.JobSpool(str(tmp_path / "spool"), "j-1")
    if local is not None:  # the play's verdict, as the callback leaves it for the worker
        spool.write(job_run.PLAY_END, logstore.result_bytes(dict(local, start=job_run.utc_now_iso(), host="h/0")))
    result, got_action, stored, error = run._finish(spool, "failed", 2, None, 1000.0)
    assert (result["outcome"], got_action, bool(result.get("retry"))) == (outcome, action, retry)
    assert result["worker"] == {"host": "h", "slot": 0, "delivery": 2, "runner_status": "failed", "rc": 2}
    if cancel == "timeout":
        assert result["reason"] == "timed out after 5 s"
    assert result["end"] and result["duration"] is not None
    # one final result.json, the same in the spool and in the store
    assert (stored, error) == (True, None)
    assert json.loads(spool.read("result.json")) == result == json.loads(run.settings.store.get("j-1", "result.json"))


def test_stored_results_that_end_a_job():
    assert job_run.is_final({"outcome": "success"})
    assert job_run.is_final({"outcome": "failure"})
    assert job_run.is_final({"outcome": "superseded"})
    assert job_run.is_final({"outcome": "error", "retry": False})
    assert not job_run.is_final({"outcome": "error", "retry": True})
    assert not job_run.is_final({"outcome": "running"})
    assert not job_run.is_final(None)


def test_job_playbooks_exist():
    assert job_run.playbook_for("noop").endswith("playbooks/jobs/noop.yml")
    assert job_run.playbook_for("test").endswith("playbooks/jobs/test.yml")
    assert job_run.playbook_for("no-such-kind") is None


def test_main_reports_config_errors(tmp_path, capsys):
    assert worker_lib.main(["--config", str(tmp_path / "missing.yml")]) == worker_lib.EXIT_CONFIG
    assert worker_lib.main(["--config", str(tmp_path / "missing.yml"), "--slot", "../1"]) == worker_lib.EXIT_CONFIG


def test_a_forge_section_the_worker_cannot_use_is_a_config_error(tmp_path, caplog):
    config = tmp_path / "config.yml"
    config.write_text("amqp: {url: 'amqp://127.0.0.1:1/'}\n"
                      "worker: {queues: [tests.public], work_dir: %s, metrics_dir: %s}\n"
                      "log_store: {url: 'file://%s'}\n"
                      "forge: {api_url: 'https://github.example.org/api/v3', token_file: %s}\n"
                      % (tmp_path / "work", tmp_path / "metrics", tmp_path / "logs", tmp_path / "token"))
    assert worker_lib.main(["--config", str(config), "--check"]) == worker_lib.EXIT_CONFIG
    assert str(tmp_path / "token") in caplog.text and "Traceback" not in caplog.text
