# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""job_report: a worker's statuses of a test job, on the fake GitHub."""

import datetime

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.forge.client import ForgeClient, ForgeError
from ansible_collections.testfleet.infra.plugins.plugin_utils.job_report import GitHubReporter, github_report

REPO = "org/proj"
SHA = "a" * 40
CONTEXT = "debian-12/default"
NOW = datetime.datetime(2026, 11, 26, 10, 0, tzinfo=datetime.timezone.utc)


def job(attempt=1, pull=7, kind="test", report=True):
    spec = {"version": 1, "id": "test-job-%d" % attempt, "kind": kind, "repo": REPO, "sha": SHA, "context": CONTEXT}
    if pull:
        spec["pull"] = pull
    if report:
        spec["report"] = {"github": {"context": CONTEXT, "attempt": attempt}}
    return spec


@pytest.fixture
def github(fake_github):
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 7, SHA)
    return fake_github


@pytest.fixture
def reporter(github):
    client = ForgeClient(api_url=github.url, token=github.token, retries=0)
    return GitHubReporter(client, "worker-1/0", deadline_margin=600, now=lambda: NOW)


def posted(github):
    return [(s["state"], statuses.parse(s)) for s in github.statuses(REPO, SHA, CONTEXT)]


def queue_status(github, kind, attempt, **extra):
    description = statuses.describe(kind, attempt=attempt, deadline=NOW + datetime.timedelta(hours=1), **extra)
    github.post_status(REPO, SHA, statuses.github_state(kind), CONTEXT, description=description)


def test_only_reported_test_jobs_are_reported():
    assert github_report(job()) == {"context": CONTEXT, "attempt": 1}
    assert github_report(job(report=False)) is None
    assert github_report(job(kind="noop")) is None


def test_running_then_the_outcome(github, reporter):
    queue_status(github, "queued", 1)
    assert reporter.running(job(), 3600, "https://logs.example.org/test-job-1/log.html")
    assert reporter.finished(job(), {"outcome": "failure", "reason": "2 tests failed",
                                     "log_url": "https://logs.example.org/test-job-1/log.html"})
    states = posted(github)
    assert [(state, p.kind) for state, p in states] == [("pending", "queued"), ("pending", "running"), ("failure", "failure")]
    running, failure = states[1][1], states[2][1]
    assert running.host == "worker-1/0" and running.attempt == 1
    assert running.deadline == NOW + datetime.timedelta(seconds=3600 + 600)
    assert failure.reason == "2 tests failed"
    assert github.statuses(REPO, SHA, CONTEXT)[-1]["target_url"] == "https://logs.example.org/test-job-1/log.html"


def test_an_identical_status_is_not_posted_again(github, reporter):
    result = {"outcome": "success", "log_url": "https://logs.example.org/x/log.html"}
    assert reporter.finished(job(), result) is True
    assert reporter.finished(job(), result) is False
    assert len(github.statuses(REPO, SHA, CONTEXT)) == 1


def test_an_unknown_outcome_is_an_error(github, reporter):
    reporter.finished(job(), {"outcome": "weird", "reason": "the playbook ended without an outcome"})
    assert posted(github)[-1][1].kind == "error"


@pytest.mark.parametrize("kind, attempt, redelivered, stale", [
    ("queued", 1, False, False),
    ("approval", 0, False, False),
    ("running", 1, True, False),        # the worker that posted it died: run again
    ("running", 1, False, True),        # another worker runs this attempt: a duplicate message
    ("success", 1, False, True),
    ("failure", 1, True, True),
    ("error", 1, False, True),
    ("queued", 2, False, True),         # reaped and re-queued: attempt 2 owns the context
    ("running", 2, True, True),
])
def test_stale_deliveries(github, reporter, kind, attempt, redelivered, stale):
    extra = {"reason": "x"} if kind in ("failure", "error") else {}
    if kind == "approval":
        github.post_status(REPO, SHA, "pending", CONTEXT, description=statuses.describe("approval"))
    else:
        queue_status(github, kind, attempt, **extra) if kind in ("queued", "running") else github.post_status(
            REPO, SHA, statuses.github_state(kind), CONTEXT, description=statuses.describe(kind, attempt=attempt, **extra))
    assert bool(reporter.stale(job(), redelivered)) is stale


def test_a_job_without_status_is_not_stale(github, reporter):
    assert reporter.stale(job(), False) is None


def test_superseded_when_the_pull_request_moves_or_closes(github, reporter):
    assert reporter.superseded(job()) is None
    github.update_pull(REPO, 7, head_sha="b" * 40)
    assert "moved on to bbbbbbbbbbbb" in reporter.superseded(job())
    github.update_pull(REPO, 7, head_sha=SHA, state="closed")
    assert "was closed" in reporter.superseded(job())
    assert reporter.superseded(job(pull=None)) is None


def test_an_unchanged_pull_request_costs_no_rate_limit(github, reporter):
    reporter.superseded(job())
    before = github.counted
    for attempt in range(3):
        assert reporter.superseded(job()) is None, attempt
    assert github.counted == before


def test_github_errors_reach_the_caller(github, reporter):
    github.inject("POST", r"/statuses/", 422, body={"message": "Validation Failed"})
    with pytest.raises(ForgeError):
        reporter.finished(job(), {"outcome": "success"})


def test_a_redelivered_running_attempt_is_not_posted_again(github, reporter):
    queue_status(github, "queued", 1)
    assert reporter.running(job(), 3600, "https://logs.example.org/test-job-1/log.html")
    other = GitHubReporter(reporter.client, "worker-2/0", now=lambda: NOW + datetime.timedelta(minutes=5))
    assert other.running(job(), 3600, "https://logs.example.org/test-job-1/log.html", redelivered=True) is False
    assert other.running(job(), 3600, "https://logs.example.org/test-job-1/log.html") is True
    assert [p.kind for state, p in posted(github)] == ["queued", "running", "running"]
