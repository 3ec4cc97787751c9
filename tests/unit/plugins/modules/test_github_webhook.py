"""github_webhook, run in-process against the fake GitHub server."""

import json

import pytest

REPO = "testfleet-example/widget"
URL = "https://ci.example.org/webhook"
SECRET = "webhook-secret-0123456789"
NEW_SECRET = "webhook-secret-rotated-42"


@pytest.fixture
def gh(fake_github):
    fake_github.add_repo(REPO)
    return fake_github


@pytest.fixture
def args(gh, tmp_path):
    token_file = tmp_path / "github-token"
    token_file.write_text(gh.token)
    return {"api_url": gh.url, "token_file": str(token_file), "repo": REPO, "url": URL, "secret": SECRET}


def writes(gh):
    return [r for r in gh.requests if r["method"] != "GET"]


def stored(gh):
    hooks = gh.hooks(REPO)
    assert len(hooks) <= 1
    return hooks[0] if hooks else None


def assert_no_secret(*results):
    text = json.dumps(results)
    assert SECRET not in text and NEW_SECRET not in text


def test_creates_the_hook_then_leaves_it_alone(run_module, gh, args):
    created = run_module("github_webhook", args, diff=True)
    assert "failed" not in created, created
    expected = {"url": URL, "content_type": "json", "events": ["issue_comment", "pull_request", "push", "status"],
                "active": True, "insecure_ssl": False, "has_secret": True}
    assert created["changed"] is True and created["changes"] == ["created"]
    assert created["hook"] == dict(expected, id=created["hook"]["id"])
    assert created["diff"] == {"before": {}, "after": dict(expected, id=None)}
    hook = stored(gh)
    assert hook["config"] == {"url": URL, "content_type": "json", "insecure_ssl": "0", "secret": SECRET}
    assert sorted(hook["events"]) == expected["events"] and hook["active"] is True
    gh.reset_records()
    again = run_module("github_webhook", args, diff=True)
    assert again["changed"] is False and again["changes"] == []
    assert again["hook"] == created["hook"] and again["diff"]["before"] == again["diff"]["after"]
    assert writes(gh) == []
    assert_no_secret(created, again)


def test_a_changed_setting_updates_the_hook_and_sends_the_secret_along(run_module, gh, args):
    run_module("github_webhook", args)
    changed = run_module("github_webhook", dict(args, events=["push"], insecure_ssl=True), diff=True)
    assert changed["changed"] is True and changed["changes"] == ["events", "insecure_ssl", "secret"]
    assert changed["diff"]["before"]["events"] == ["issue_comment", "pull_request", "push", "status"]
    assert changed["diff"]["after"]["events"] == ["push"]
    assert changed["hook"]["events"] == ["push"] and changed["hook"]["insecure_ssl"] is True
    hook = stored(gh)
    assert hook["events"] == ["push"] and hook["config"]["insecure_ssl"] == "1"
    assert hook["config"]["secret"] == SECRET  # GitHub drops a secret missing from a new config
    assert_no_secret(changed)


def test_a_new_secret_is_sent_only_when_asked(run_module, gh, args):
    run_module("github_webhook", args)
    gh.reset_records()
    on_create = run_module("github_webhook", dict(args, secret=NEW_SECRET))
    assert on_create["changed"] is False and writes(gh) == []
    assert stored(gh)["config"]["secret"] == SECRET
    always = run_module("github_webhook", dict(args, secret=NEW_SECRET, update_secret="always"), diff=True)
    assert always["changed"] is True and always["changes"] == ["secret"]
    assert stored(gh)["config"]["secret"] == NEW_SECRET
    assert [r["method"] for r in writes(gh)] == ["PATCH"]
    assert_no_secret(on_create, always)


def test_secret_presence_is_managed(run_module, gh, args):
    gh.add_hook(REPO, URL, events=["issue_comment", "pull_request", "push", "status"])
    added = run_module("github_webhook", args)
    assert added["changed"] is True and added["changes"] == ["has_secret", "secret"]
    assert stored(gh)["config"]["secret"] == SECRET
    unsigned = dict(args)
    del unsigned["secret"]
    removed = run_module("github_webhook", unsigned, diff=True)
    assert removed["changed"] is True and removed["changes"] == ["has_secret"]
    assert removed["diff"]["before"]["has_secret"] is True and removed["diff"]["after"]["has_secret"] is False
    assert "secret" not in stored(gh)["config"]
    assert run_module("github_webhook", unsigned)["changed"] is False
    assert_no_secret(added, removed)


def test_check_mode_changes_nothing(run_module, gh, args):
    create = run_module("github_webhook", args, check_mode=True, diff=True)
    assert create["changed"] is True and create["hook"]["id"] is None and stored(gh) is None
    run_module("github_webhook", args)
    hook = stored(gh)
    update = run_module("github_webhook", dict(args, active=False, content_type="form"), check_mode=True)
    assert update["changed"] is True and update["changes"] == ["content_type", "active", "secret"]
    assert update["hook"]["active"] is False
    delete = run_module("github_webhook", dict(args, state="absent"), check_mode=True)
    assert delete["changed"] is True and delete["changes"] == ["deleted"]
    assert stored(gh) == hook
    assert_no_secret(create, update, delete)


def test_absent_deletes_the_hook_of_that_url_only(run_module, gh, args):
    run_module("github_webhook", args)
    gh.add_hook(REPO, "https://elsewhere.example.org/hook")
    deleted = run_module("github_webhook", dict(args, state="absent"), diff=True)
    assert deleted["changed"] is True and deleted["hook"] is None
    assert deleted["diff"]["after"] == {} and deleted["diff"]["before"]["url"] == URL
    assert [h["config"]["url"] for h in gh.hooks(REPO)] == ["https://elsewhere.example.org/hook"]
    assert run_module("github_webhook", dict(args, state="absent"))["changed"] is False


def test_github_refusals_fail_clearly(run_module, gh, args):
    gh.inject("GET", "/hooks$", 404)
    missing = run_module("github_webhook", args)
    assert missing["failed"] is True and missing["http_status"] == 404
    assert "GET /repos/%s/hooks?per_page=100" % REPO in missing["msg"]
    gh.inject("POST", "/hooks$", 422, body={"message": "Validation Failed", "errors": [
        {"resource": "Hook", "code": "custom", "message": "Sorry, the URL host ci.example.org is not supported"}]})
    refused = run_module("github_webhook", args)
    assert refused["failed"] is True and refused["changed"] is False
    assert refused["msg"].endswith("Sorry, the URL host ci.example.org is not supported")
    empty = run_module("github_webhook", dict(args, events=[]))
    assert empty["failed"] is True and "at least one event" in empty["msg"]
    assert_no_secret(missing, refused, empty)
