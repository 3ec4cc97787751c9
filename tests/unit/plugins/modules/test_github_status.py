"""github_status, run in-process against the fake GitHub server."""

import json

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import statuses

REPO = "testfleet-example/widget"
SHA = "2" * 40
DEADLINE = "2030-05-01T12:30:00Z"
LOG = "https://logs.example.org/logs/job-1/log.html"


@pytest.fixture
def gh(fake_github):
    fake_github.add_repo(REPO)
    return fake_github


@pytest.fixture
def args(gh, tmp_path):
    token_file = tmp_path / "github-token"
    token_file.write_text(gh.token)
    return {"api_url": gh.url, "token_file": str(token_file), "repo": REPO, "sha": SHA,
            "context": "debian-12/default"}


def posts(gh):
    return [r for r in gh.requests if r["method"] == "POST"]


def test_posts_a_running_status_in_the_testfleet_format(run_module, gh, args):
    result = run_module("github_status", dict(args, state="running", host="worker-1/0", attempt=2,
                                              deadline=DEADLINE, target_url=LOG), diff=True)
    description = "running on worker-1/0 \u00b7 attempt 2 \u00b7 deadline 2030-05-01T12:30Z"
    assert "failed" not in result, result
    assert result["changed"] is True and result["github_state"] == "pending"
    assert (result["status"]["context"], result["status"]["state"], result["status"]["description"],
            result["status"]["target_url"]) == ("debian-12/default", "pending", description, LOG)
    assert result["diff"] == {"before": {},
                              "after": {"state": "pending", "description": description, "target_url": LOG}}
    posted = gh.statuses(REPO, SHA)
    assert [(s["context"], s["state"], s["description"], s["target_url"]) for s in posted] == [
        ("debian-12/default", "pending", description, LOG)]
    assert statuses.parse(posted[0]).host == "worker-1/0"


def test_an_identical_status_is_not_posted_again(run_module, gh, args):
    failure = dict(args, state="failure", host="worker-1/0", reason="3 tests failed", target_url=LOG)
    assert run_module("github_status", failure)["changed"] is True
    gh.reset_records()
    again = run_module("github_status", failure, diff=True)
    assert again["changed"] is False and "failed" not in again
    assert again["diff"]["before"] == again["diff"]["after"]
    assert again["status"]["description"] == "failure on worker-1/0 \u00b7 attempt 1 \u00b7 3 tests failed"
    assert posts(gh) == [] and len(gh.statuses(REPO, SHA)) == 1
    other_link = run_module("github_status", dict(failure, target_url=LOG + "?2"))
    assert other_link["changed"] is True and len(gh.statuses(REPO, SHA)) == 2


def test_the_state_maps_to_githubs(run_module, gh, args):
    expected = {"queued": "pending", "running": "pending", "approval": "pending", "success": "success",
                "failure": "failure", "error": "error", "superseded": "error"}
    for number, (kind, state) in enumerate(sorted(expected.items())):
        result = run_module("github_status", dict(args, context="c%d" % number, state=kind, deadline=DEADLINE,
                                                  reason="the pull request moved on"))
        assert result["github_state"] == state and result["changed"] is True
        assert statuses.parse(gh.statuses(REPO, SHA, "c%d" % number)[0]).kind == kind


def test_check_mode_reports_and_posts_nothing(run_module, gh, args):
    queued = dict(args, state="queued", deadline=DEADLINE)
    result = run_module("github_status", queued, check_mode=True, diff=True)
    assert result["changed"] is True
    assert result["diff"]["after"]["description"] == "queued \u00b7 attempt 1 \u00b7 deadline 2030-05-01T12:30Z"
    assert result["status"]["state"] == "pending"
    assert posts(gh) == [] and gh.statuses(REPO, SHA) == []
    run_module("github_status", queued)
    assert run_module("github_status", queued, check_mode=True)["changed"] is False


def test_a_description_override_is_posted_as_given(run_module, gh, args):
    result = run_module("github_status", dict(args, state="success", description="all good"))
    assert result["status"]["description"] == "all good"
    assert gh.statuses(REPO, SHA)[0]["description"] == "all good"


def test_a_422_fails_quoting_github(run_module, gh, args):
    result = run_module("github_status", dict(args, state="success", description="x" * 141))
    assert result["failed"] is True and result["changed"] is False
    assert result["http_status"] == 422
    assert "description is too long (maximum is 140 characters)" in result["msg"]
    for number in range(1000):
        gh.post_status(REPO, SHA, "pending", args["context"], description="try %d" % number)
    full = run_module("github_status", dict(args, state="success", host="worker-1/0"))
    assert full["failed"] is True and full["http_status"] == 422
    assert "This SHA and context has reached the maximum number of statuses." in full["msg"]


def test_pending_kinds_need_a_deadline(run_module, gh, args):
    result = run_module("github_status", dict(args, state="running", host="worker-1/0"))
    assert result["failed"] is True
    assert "state is running but any of the following are missing: deadline, description" in result["msg"]
    assert gh.requests == []


def test_github_errors_fail_clearly_and_never_show_the_token(run_module, gh, args):
    result = run_module("github_status", dict(args, repo="testfleet-example/missing", state="success"))
    assert result["failed"] is True and result["http_status"] == 404
    assert result["msg"].startswith("GitHub answered 404 Not Found to GET /repos/testfleet-example/missing/commits/")
    inline_args = dict(args, token="ghp_" + "z" * 36, state="success")
    del inline_args["token_file"]
    inline = run_module("github_status", inline_args)
    assert inline["failed"] is True and inline["http_status"] == 401
    assert "z" * 36 not in json.dumps(inline)
    both = run_module("github_status", dict(args, token="ghp_another", state="success"))
    assert both["failed"] is True and "mutually exclusive: token|token_file|app_id" in both["msg"]
    assert gh.token not in json.dumps([result, inline, both])


def test_a_shared_etag_cache_makes_an_unchanged_read_free(run_module, gh, args, tmp_path):
    cached = dict(args, state="success", host="worker-1/0", etag_cache_dir=str(tmp_path / "etags"))
    run_module("github_status", cached)  # reads (200), posts
    assert run_module("github_status", cached)["changed"] is False  # the status changed: 200
    counted = gh.counted
    assert run_module("github_status", cached)["changed"] is False
    assert gh.counted == counted
    assert [r["status"] for r in gh.requests[-1:]] == [304]
