"""The job-run contract: outcome words, the result, the callback's options, the extra vars."""

import time

import pytest

from ansible_collections.testfleet.infra.plugins.callback import job_log
from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore


def test_timestamps_round_trip():
    now = time.time()
    assert abs(job_run.parse_iso(job_run.utc_now_iso(now)) - now) < 1e-5
    assert job_run.utc_now_iso(0) == "1970-01-01T00:00:00.000000Z"


def test_outcome_words_are_the_status_kinds_of_module_utils():
    assert set(job_run.OUTCOME_MEANINGS) == set(statuses.OUTCOMES) <= set(statuses.KINDS)
    assert "superseded" in job_run.OUTCOME_MEANINGS
    for outcome in ("success", "failure", "error", "superseded"):
        assert job_run.status_kind({"outcome": outcome}) == outcome
    assert job_run.status_kind({"outcome": "running"}) == "error"
    assert job_run.status_kind({}) == "error"


@pytest.mark.parametrize("verdict, cancel, expected", [
    ({"outcome": "success"}, {}, ("success", None, False)),
    ({"outcome": "failure", "reason": "3 tests failed"}, {}, ("failure", "3 tests failed", False)),
    ({"outcome": "error", "reason": "clone failed"}, {}, ("error", "clone failed", True)),
    (None, {"runner_status": "failed", "rc": 2},
     ("error", "the playbook ended without an outcome (ansible-runner status failed, rc 2)", True)),
    (None, {"runner_error": "no playbook"}, ("error", "no playbook", True)),
    ({"outcome": "success"}, {"cancel": "timeout", "timeout": 5}, ("error", "timed out after 5 s", False)),
    (None, {"cancel": "superseded", "superseded_reason": "pull request #1 was closed"},
     ("superseded", "pull request #1 was closed", False)),
    (None, {"cancel": "stop"}, ("error", "the worker was stopped during the job; the job was requeued", True)),
])
def test_decide(verdict, cancel, expected):
    assert job_run.decide(verdict, **cancel)[:3] == expected


def test_finish_without_a_worker_writes_the_result_once(tmp_path):
    store = logstore.LocalStore(str(tmp_path / "logs"))
    spool = logstore.JobSpool(str(tmp_path / "spool"), "j-1")
    spool.append("the log\n")
    job = {"version": 1, "id": "j-1", "kind": "noop", "args": {"secrets": {"T": "hunter22"}}}
    verdict = {"outcome": "failure", "reason": "printed hunter22", "retry": False, "host": "h/0",
               "start": job_run.utc_now_iso(1000.0)}
    result, stored, error = job_run.finish(job, spool, store, "other", 1.0, verdict=verdict)
    assert (stored, error) == (True, None)
    assert result["outcome"] == "failure" and result["reason"] == "printed ********" and result["host"] == "h/0"
    assert result["start"] == job_run.utc_now_iso(1000.0) and "worker" not in result
    assert result["job"]["args"]["secrets"] == {"T": "********"}
    assert result["log_url"] == store.location("j-1", "log.html")
    assert spool.read("result.json") == store.get("j-1", "result.json") == logstore.result_bytes(result)
    assert sorted(store.list("j-1")) == ["log", "log.html", "result.json"]


def test_the_worker_sets_the_callbacks_options_by_their_documented_names():
    env = job_run.option_env(job_log.DOCUMENTATION, {"worker_pid": 12, "spool_dir": "/s", "host_name": "h/0",
                                                     "log_store": "file:///l", "endpoint_url": None})
    assert env == {"TESTFLEET_WORKER_PID": "12", "TESTFLEET_SPOOL_DIR": "/s", "TESTFLEET_HOST": "h/0",
                   "TESTFLEET_LOG_STORE": "file:///l"}


def test_extra_vars_of_a_job_playbook():
    job = {"version": 1, "id": "j-1", "kind": "test"}
    assert job_run.extra_vars(job, "w1", 0, 2, "/work", clone_url="file:///r/{repo}", config_path="/c.yml") == {
        "version": 1, "id": "j-1", "kind": "test", "testfleet_worker": {"host": "w1", "slot": 0, "delivery": 2},
        "testfleet_host": "w1/0", "testfleet_work_dir": "/work", "testfleet_clone_url_template": "file:///r/{repo}",
        "testfleet_config": "/c.yml"}
    assert job_run.job_from_vars(dict(job, testfleet_host="w1/0", other=1)) == job
