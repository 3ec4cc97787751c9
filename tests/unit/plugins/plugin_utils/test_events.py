"""events.py: every fixture delivery (the project's, and the real ones in ../shared when present)
mapped to its scan job, comment commands, deterministic job ids, malformed deliveries."""

import json
import pathlib

import pytest

from ansible_collections.testfleet.infra.plugins.plugin_utils import events

from ansible_collections.testfleet.infra.plugins.module_utils import config, jobs, webhook_events

REPO_ROOT = pathlib.Path(__file__).resolve().parents[4]
OWN_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "webhooks"
SHARED_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "github-webhooks"

WIDGET = "testfleet-example/widget"
HEAD = "4c1e0f6d8a2b9e37f5d0c6a1b8e2f9d3c7a4b5e6"


def pull_job(action, sha=HEAD, repo=WIDGET, pull=42):
    return {"repo": repo, "pull": pull, "sha": sha, "args": {"trigger": "pull_request/" + action}}


# (event folder, file) -> the job's fields besides version, id and kind; or a text the reason
# for ignoring it contains. Every file of tests/fixtures/webhooks must be listed here.
OWN_EXPECTED = {
    ("check_run", "completed.payload.json"): "check_run: not an event testfleet scans for",
    ("issue_comment", "created.payload.json"): {
        "repo": WIDGET, "pull": 42, "args": {"trigger": "issue_comment", "commands": [
            {"command": "retest", "contexts": ["freebsd-14/default"], "user": "bob-reviewer",
             "created_at": "2026-11-25T22:01:12Z"}]}},
    ("issue_comment", "edited.payload.json"): "issue_comment edited: only new comments carry commands",
    ("ping", "payload.json"): "ping: GitHub checks the hook",
    ("pull_request", "closed.payload.json"): pull_job("closed"),
    ("pull_request", "edited.payload.json"): "pull_request action 'edited' does not change what to test",
    ("pull_request", "labeled.payload.json"): pull_job("labeled"),
    ("pull_request", "opened.payload.json"): pull_job("opened"),
    ("pull_request", "ready_for_review.payload.json"): pull_job("ready_for_review"),
    ("pull_request", "reopened.payload.json"): pull_job("reopened"),
    ("pull_request", "synchronize.payload.json"): pull_job("synchronize", sha="7f3e2d1c0b9a8f7e6d5c4b3a29181716f5e4d3c2"),
    ("push", "payload.json"): {"repo": WIDGET, "ref": "refs/heads/main",
                               "sha": "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f", "args": {"trigger": "push"}},
    ("push", "tag.payload.json"): "push to refs/tags/v1.4.0: not a branch",
    ("status", "payload.json"): "status pending: nothing to re-queue",
}

HELLO = "Codertocat/Hello-World"
HELLO_HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
# The real deliveries of ../shared/fixtures/github-webhooks (octokit/webhooks examples).
SHARED_EXPECTED = {
    ("create", "payload.json"): "create: not an event testfleet scans for",
    ("issue_comment", "created.payload.json"): "issue_comment on issue #1, not on a pull request",
    ("ping", "payload.json"): "ping: GitHub checks the hook",
    ("pull_request", "closed.payload.json"): pull_job("closed", HELLO_HEAD, HELLO, 2),
    ("pull_request", "opened.payload.json"): pull_job("opened", HELLO_HEAD, HELLO, 2),
    ("pull_request", "synchronize.payload.json"): pull_job("synchronize", HELLO_HEAD, HELLO, 2),
    ("push", "payload.json"): "push to refs/tags/simple-tag: not a branch",
    ("status", "payload.json"): "status success: nothing to re-queue",
}


def fixture_files(root):
    return sorted((path.parent.name, path.name) for path in root.glob("*/*.json"))


def delivery(event, payload, delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958"):
    return {"delivery": delivery_id, "event": event, "received_at": "2024-05-01T12:00:00Z", "payload": payload}


def load(root, event, name):
    return delivery(event, json.loads((root / event / name).read_text()))


def check(root, event, name, expected):
    job, why = events.scan_job_for_delivery(load(root, event, name))
    assert isinstance(why, str) and why
    if isinstance(expected, str):
        assert job is None, job
        assert expected in why
        return
    assert job == dict(expected, version=1, id="gh-72d3162e-cc78-11e3-81ab-4c9367dc0958", kind="scan")
    assert jobs.validate_job(job) is job
    # what goes on the wire decodes to the same job
    assert jobs.decode_job(jobs.encode_job(job)) == job


def test_every_own_fixture_is_listed():
    assert fixture_files(OWN_FIXTURES) == sorted(OWN_EXPECTED)


@pytest.mark.parametrize("event,name", sorted(OWN_EXPECTED))
def test_own_fixture_deliveries(event, name):
    check(OWN_FIXTURES, event, name, OWN_EXPECTED[(event, name)])


def shared_cases():
    if not SHARED_FIXTURES.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason="%s does not exist" % SHARED_FIXTURES))]
    return fixture_files(SHARED_FIXTURES)


@pytest.mark.parametrize("event,name", shared_cases())
def test_real_deliveries(event, name):
    expected = SHARED_EXPECTED.get((event, name))
    if expected is None:  # a file added there later: it must map cleanly either way
        job, why = events.scan_job_for_delivery(load(SHARED_FIXTURES, event, name))
        assert why and (job is None or jobs.validate_job(job) is job)
        return
    check(SHARED_FIXTURES, event, name, expected)


def test_a_redelivered_delivery_makes_the_same_job_id():
    message = load(OWN_FIXTURES, "pull_request", "opened.payload.json")
    first, dummy = events.scan_job_for_delivery(message)
    again, dummy = events.scan_job_for_delivery(json.loads(json.dumps(message)))
    assert first == again
    other, dummy = events.scan_job_for_delivery(dict(message, delivery="another-delivery"))
    assert other["id"] == "gh-another-delivery" != first["id"]


@pytest.mark.parametrize("delivery_id", ["a:b:c", "x" * 126, "white space"])
def test_delivery_ids_that_are_no_job_id_are_hashed(delivery_id):
    job_id = events.job_id_for_delivery(delivery_id)
    assert jobs.ID_RE.match(job_id) and job_id.startswith("gh-") and len(job_id) == 43
    assert events.job_id_for_delivery(delivery_id) == job_id
    assert events.job_id_for_delivery(delivery_id + "1") != job_id


@pytest.mark.parametrize("body,commands", [
    ("/retest", [{"command": "retest", "contexts": []}]),
    ("please\n/retest debian-12/default  fedora-40/default\r\nthanks",
     [{"command": "retest", "contexts": ["debian-12/default", "fedora-40/default"]}]),
    ("  /retest a a b", [{"command": "retest", "contexts": ["a", "b"]}]),
    ("/approve", [{"command": "approve", "contexts": []}]),
    ("/approve\n/retest x\n/retest x", [{"command": "approve", "contexts": []},
                                        {"command": "retest", "contexts": ["x"]}]),
    ("/approve cancel", []),            # only a bare /approve approves
    ("/retesting", []),
    ("I will /retest later", []),
    ("> /retest", []),                  # quoted
    ("```\n/retest\n```", []),          # in a code fence
    ("~~~sh\n/approve\n~~~\n/retest y", [{"command": "retest", "contexts": ["y"]}]),
    ("/retest debian-12/default; rm -rf /", []),  # not context names: not a command
    ("/Retest", []),
    ("", []),
    (None, []),
])
def test_parse_commands(body, commands):
    assert events.parse_commands(body) == commands


def test_commands_are_capped():
    assert len(events.parse_commands("\n".join("/retest c%d" % n for n in range(50)))) == events.MAX_COMMANDS
    assert events.parse_commands("/retest " + " ".join("c%d" % n for n in range(events.MAX_CONTEXTS + 1))) == []


def comment_payload(body, pull_request=True, action="created", login="alice"):
    issue = {"number": 7}
    if pull_request:
        issue["pull_request"] = {"url": "https://api.github.com/repos/o/r/pulls/7"}
    return {"action": action, "issue": issue, "comment": {"body": body, "user": {"login": login},
                                                          "created_at": "2024-05-01T10:00:00Z"},
            "repository": {"full_name": "o/r"}}


def test_comment_commands_carry_the_author():
    job, why = events.scan_job_for_delivery(delivery("issue_comment", comment_payload("/retest a/b\n/approve")))
    assert job["repo"] == "o/r" and job["pull"] == 7 and "sha" not in job
    assert job["args"] == {"trigger": "issue_comment", "commands": [
        {"command": "retest", "contexts": ["a/b"], "user": "alice", "created_at": "2024-05-01T10:00:00Z"},
        {"command": "approve", "contexts": [], "user": "alice", "created_at": "2024-05-01T10:00:00Z"}]}
    assert why == "issue_comment on o/r#7 by alice: /retest a/b; /approve"


@pytest.mark.parametrize("payload,reason", [
    (comment_payload("/retest", pull_request=False), "not on a pull request"),
    (comment_payload("looks good"), "has no command"),
    (comment_payload("/retest", action="deleted"), "only new comments carry commands"),
])
def test_comments_that_ask_for_nothing(payload, reason):
    job, why = events.scan_job_for_delivery(delivery("issue_comment", payload))
    assert job is None and reason in why


def push_payload(**changes):
    payload = {"ref": "refs/heads/feature/x", "after": "a" * 40, "deleted": False, "repository": {"full_name": "o/r"}}
    payload.update(changes)
    return payload


def test_pushes():
    job, why = events.scan_job_for_delivery(delivery("push", push_payload()))
    assert (job["ref"], job["sha"]) == ("refs/heads/feature/x", "a" * 40)
    for payload in (push_payload(deleted=True, after="0" * 40), push_payload(after="0" * 40)):
        job, why = events.scan_job_for_delivery(delivery("push", payload))
        assert job is None and why == "push to refs/heads/feature/x of o/r: the branch was deleted"


@pytest.mark.parametrize("message,problem", [
    ({"delivery": "d", "event": "push"}, "a delivery is an object with the keys delivery, event, payload"),
    (delivery("push", []), "'payload' must be an object, got list"),
    (delivery("push", {}, delivery_id=5), "'delivery' must be the X-GitHub-Delivery id"),
    (dict(delivery("push", {}), event=None), "'event' must be the X-GitHub-Event name"),
    (delivery("push", push_payload(repository={})), "payload.repository.full_name (the repository) is missing"),
    (delivery("push", push_payload(repository={"full_name": "no-slash"})), "is not 'owner/name'"),
    (delivery("push", push_payload(after="abc")), "payload.after 'abc' is not a full commit hash"),
    (delivery("push", push_payload(ref=None)), "payload.ref (the pushed ref) is missing or not a string"),
    (delivery("pull_request", {"action": "opened", "repository": {"full_name": "o/r"},
                               "pull_request": {"number": "7", "head": {"sha": "a" * 40}}}),
     "payload.pull_request.number (the pull request number) is missing or not an integer"),
    (delivery("pull_request", {"action": "opened", "repository": {"full_name": "o/r"},
                               "pull_request": {"number": 7, "head": {}}}),
     "payload.pull_request.head.sha (a commit) is missing"),
    (delivery("issue_comment", dict(comment_payload("/retest"), comment={"body": "/retest", "user": None})),
     "payload.comment.user.login (the comment's author) is missing"),
    (delivery("issue_comment", dict(comment_payload("/retest"), comment={"body": 5})), "payload.comment.body is not a string"),
    (delivery("issue_comment", dict(comment_payload("/retest"), comment={"body": "/retest", "user": {"login": "a"},
                                                                         "created_at": 5})),
     "payload.comment.created_at is not a string"),
])
def test_malformed_deliveries(message, problem):
    with pytest.raises(events.InvalidDelivery) as info:
        events.scan_job_for_delivery(message)
    assert problem in str(info.value)
    assert str(info.value).startswith("invalid webhook delivery: ")


def test_job_for_message_takes_jobs_and_deliveries():
    job = {"version": 1, "id": "scan-1", "kind": "scan", "repo": "o/r"}
    assert events.job_for_message(json.dumps(job).encode()) == (job, None)
    message = load(OWN_FIXTURES, "pull_request", "opened.payload.json")
    assert events.job_for_message(json.dumps(message)) == events.scan_job_for_delivery(message)
    assert events.job_for_message(json.dumps(delivery("ping", {"zen": "z"})))[0] is None
    with pytest.raises(jobs.JobError, match="is not valid JSON"):
        events.job_for_message(b"{nope")
    with pytest.raises(jobs.JobError, match="is not UTF-8"):
        events.job_for_message(b"\xff")
    with pytest.raises(jobs.JobError, match="field 'delivery' is not a job field"):
        events.job_for_message(json.dumps({"delivery": "d", "event": "push"}))  # no payload: not a delivery


def test_an_error_status_scans_its_commit():
    payload = json.loads((OWN_FIXTURES / "status" / "payload.json").read_text())
    payload["state"] = "error"
    job, why = events.scan_job_for_delivery(delivery("status", payload))
    assert job["kind"] == "scan" and job["repo"] == "testfleet-example/widget"
    assert job["sha"] == payload["sha"] and "pull" not in job
    assert job["args"] == {"trigger": "status/error"}
    assert why.startswith("status error of ")


@pytest.mark.parametrize("state", ["pending", "success", "failure", None])
def test_other_statuses_are_ignored(state):
    payload = json.loads((OWN_FIXTURES / "status" / "payload.json").read_text())
    payload["state"] = state
    assert events.scan_job_for_delivery(delivery("status", payload))[0] is None


def test_an_error_status_without_a_commit_is_invalid():
    payload = json.loads((OWN_FIXTURES / "status" / "payload.json").read_text())
    payload.update(state="error", sha="not-a-sha")
    with pytest.raises(events.InvalidDelivery):
        events.scan_job_for_delivery(delivery("status", payload))


# A delivery of each event testfleet scans for that calls for a scan: (folder, file, changes).
SCANNABLE = {
    "pull_request": ("pull_request", "opened.payload.json", {}),
    "push": ("push", "payload.json", {}),
    "issue_comment": ("issue_comment", "created.payload.json", {}),
    "status": ("status", "payload.json", {"state": "error"}),
}


def test_the_handlers_are_the_event_list():
    """The worker has a handler for each event the webhook lets through to be scanned, and a
    reason for each one it lets through without a scan: no more, no fewer."""
    assert sorted(events.HANDLERS) == sorted(webhook_events.SCANNED), \
        "events.HANDLERS and webhook_events.SCANNED name different events"
    assert sorted(events.IGNORED) == sorted(webhook_events.ACKNOWLEDGED), \
        "events.IGNORED and webhook_events.ACKNOWLEDGED name different events"
    assert sorted(SCANNABLE) == sorted(webhook_events.SCANNED), "give SCANNABLE a delivery of each scanned event"


def test_the_webhook_filter_is_the_event_list():
    assert config.DEFAULT_EVENTS == webhook_events.default_filter()
    assert sorted(config.DEFAULT_EVENTS) == sorted(set(webhook_events.SCANNED) | set(webhook_events.ACKNOWLEDGED))


@pytest.mark.parametrize("event", sorted(SCANNABLE))
def test_each_handler_scans_exactly_the_listed_actions(event):
    folder, name, changes = SCANNABLE[event]
    payload = dict(json.loads((OWN_FIXTURES / folder / name).read_text()), **changes)
    actions = webhook_events.SCANNED.get(event)
    for action in actions or [payload.get("action")]:
        payload["action"] = action
        job, why = events.scan_job_for_delivery(delivery(event, payload))
        assert job is not None, "%s %s passes the webhook's filter, but the worker scans nothing: %s" % (
            event, action, why)
    if actions:
        payload["action"] = "not_listed"
        job, why = events.scan_job_for_delivery(delivery(event, payload))
        assert job is None, "%s not_listed is not in the webhook's filter, but the worker scans it" % event
