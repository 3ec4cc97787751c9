import datetime

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import jobs


from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.scan.plan import (
    Action, job_id, plan_pull, plan_ref, review_pull, review_ref)
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import parse_testmap

UTC = datetime.timezone.utc
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SOON = NOW + datetime.timedelta(minutes=5)
PAST = NOW - datetime.timedelta(minutes=5)
BEFORE = "2024-05-01T11:00:00Z"       # statuses written an hour ago
COMMAND_TIME = "2024-05-01T11:50:00Z"
SHA = "0123456789abcdef0123456789abcdef01234567"

TMAP = parse_testmap({
    "defaults": {"queued_timeout": 3600},
    "allow": {"authors": ["alice"]},
    "repos": {
        "org/one": {"branches": {"main": ["ctx/a"]}, "manual": ["ctx/m"]},
        "org/two": {"branches": {"main": ["ctx/a", {"context": "ctx/b", "queue": "tests.internal"}],
                                 "stable-*": ["ctx/a"]},
                    "manual": ["ctx/m", "ctx/n"]},
        "org/labels": {"defaults": {"skip_labels": ["skip-ci"], "max_attempts": 1},
                       "branches": {"main": ["ctx/a"]}},
    },
})


def ours(kind, attempt=1, host=None, reason=None, deadline=None, updated=BEFORE):
    return {"state": statuses.github_state(kind),
            "description": statuses.describe(kind, attempt=attempt, host=host, reason=reason, deadline=deadline),
            "target_url": None, "updated_at": updated}


def foreign(state, description="Build finished", updated=BEFORE):
    return {"state": state, "description": description, "target_url": None, "updated_at": updated}


def pull(**changes):
    base = {"number": 4, "state": "open", "draft": False, "merged": False, "head_sha": SHA,
            "head_ref": "feature", "base_ref": "main", "author": "alice", "author_association": "NONE",
            "labels": []}
    base.update(changes)
    return base


def command(name="retest", contexts=(), user="maint", permission="write", created_at=COMMAND_TIME):
    return {"command": name, "contexts": list(contexts), "user": user, "permission": permission,
            "created_at": created_at}


def brief(actions):
    return [(a.kind, a.context, a.attempt) for a in actions]


# --- one context, a trusted author: what each status leads to ------------------------------------

GAVE_UP_3 = statuses.GAVE_UP % 3 + ": clone failed"

DECISIONS = [
    ("no status", None, [("queue", "ctx/a", 1)]),
    ("queued within its deadline", ours("queued", deadline=SOON), []),
    ("queued at its deadline", ours("queued", deadline=NOW), []),
    ("queued past its deadline", ours("queued", deadline=PAST), [("reap", "ctx/a", 1)]),
    ("running within its deadline", ours("running", 2, "w/1", deadline=SOON), []),
    ("running past its deadline", ours("running", 2, "w/1", deadline=PAST), [("reap", "ctx/a", 2)]),
    ("running past its deadline, last attempt", ours("running", 3, "w/1", deadline=PAST), [("reap", "ctx/a", 3)]),
    ("success", ours("success"), []),
    ("failure", ours("failure", 2, reason="tests failed"), []),
    ("superseded", ours("superseded", reason="moved on"), []),
    ("error, attempt 1", ours("error", 1, reason="clone failed"), [("queue", "ctx/a", 2)]),
    ("error, attempt 2", ours("error", 2, reason="clone failed"), [("queue", "ctx/a", 3)]),
    ("error, last attempt", ours("error", 3, reason="clone failed"), [("give_up", "ctx/a", 3)]),
    ("error beyond the last attempt", ours("error", 5, reason="x"), [("give_up", "ctx/a", 5)]),
    ("error, given up", ours("error", 3, reason=GAVE_UP_3), []),
    ("approval, author trusted", ours("approval"), [("queue", "ctx/a", 1)]),
    ("someone else's pending", foreign("pending", "Waiting"), []),
    ("someone else's success", foreign("success"), []),
    ("someone else's failure", foreign("failure"), []),
    ("someone else's error", foreign("error"), [("queue", "ctx/a", 1)]),
    ("ours in words, state disagrees: pending", foreign("pending", "success · attempt 1"), []),
    ("ours in words, state disagrees: error", foreign("error", "queued · attempt 1 · deadline 2024-05-01T11:55Z"),
     [("queue", "ctx/a", 1)]),
]


@pytest.mark.parametrize("label, status, expected", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_decisions_for_one_context(label, status, expected):
    given = {} if status is None else {"ctx/a": status}
    assert brief(plan_pull(TMAP, "org/one", pull(), given, NOW)) == expected
    # a branch head follows the same rules
    assert brief(plan_ref(TMAP, "org/one", "main", SHA, given, NOW)) == expected


def test_a_queue_action_carries_the_spec_and_the_queued_deadline():
    [action] = plan_pull(TMAP, "org/two", pull(), {"ctx/a": ours("success")}, NOW)
    assert action.kind == "queue" and action.context == "ctx/b"
    assert action.spec.queue == "tests.internal"
    assert action.deadline == NOW + datetime.timedelta(seconds=3600)
    assert action.reason == "not tested yet"
    assert action.status() == {"state": "pending", "target_url": None,
                               "description": "queued · attempt 1 · deadline 2024-05-01T13:00Z"}
    assert action.as_dict() == {"kind": "queue", "context": "ctx/b", "attempt": 1, "reason": "not tested yet",
                                "queue": "tests.internal", "deadline": "2024-05-01T13:00:00Z"}


def test_a_reap_says_what_expired_and_keeps_the_host():
    [action] = plan_pull(TMAP, "org/one", pull(), {"ctx/a": ours("running", 2, "w/1", deadline=PAST)}, NOW)
    assert action.reason == "deadline passed (running until 2024-05-01T11:55Z)"
    assert action.status() == {"state": "error", "target_url": None,
                               "description": "error on w/1 · attempt 2 · deadline passed (running until 2024-05-01T11:55Z)"}
    # the next scan re-queues it
    after = {"ctx/a": dict(action.status(), updated_at="2024-05-01T12:00:00Z")}
    assert brief(plan_pull(TMAP, "org/one", pull(), after, NOW)) == [("queue", "ctx/a", 3)]


def test_a_reap_of_the_last_attempt_gives_up_at_once():
    [action] = plan_pull(TMAP, "org/one", pull(), {"ctx/a": ours("queued", 3, deadline=PAST)}, NOW)
    assert action.reason == "gave up after 3 attempts: deadline passed (queued until 2024-05-01T11:55Z)"
    after = {"ctx/a": dict(action.status(), updated_at="2024-05-01T12:00:00Z")}
    assert plan_pull(TMAP, "org/one", pull(), after, NOW) == []


def test_giving_up_is_posted_once_with_the_reason():
    [action] = plan_pull(TMAP, "org/one", pull(), {"ctx/a": ours("error", 3, "w/2", reason="clone failed")}, NOW)
    assert action.status()["description"] == "error on w/2 · attempt 3 · gave up after 3 attempts: clone failed"
    after = {"ctx/a": dict(action.status(), updated_at="2024-05-01T12:00:00Z")}
    assert plan_pull(TMAP, "org/one", pull(), after, NOW) == []


def test_max_attempts_comes_from_the_repository():
    assert brief(plan_pull(TMAP, "org/labels", pull(), {"ctx/a": ours("error", 1, reason="x")}, NOW)) == [
        ("give_up", "ctx/a", 1)]


def test_a_statuses_deadline_is_compared_with_now_in_any_form():
    given = {"ctx/a": ours("queued", deadline=PAST)}
    assert brief(plan_pull(TMAP, "org/one", pull(), given, NOW.timestamp())) == [("reap", "ctx/a", 1)]
    assert brief(plan_pull(TMAP, "org/one", pull(), given, "2024-05-01T11:50:00Z")) == []


def test_contexts_in_test_map_order_and_others_ignored():
    given = {"ci/other": foreign("pending"), "ctx/x": ours("error", 1, reason="x")}
    assert brief(plan_pull(TMAP, "org/two", pull(), given, NOW)) == [("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]


def test_the_base_branch_chooses_the_contexts():
    assert brief(plan_pull(TMAP, "org/two", pull(base_ref="stable-2"), {}, NOW)) == [("queue", "ctx/a", 1)]
    assert plan_pull(TMAP, "org/two", pull(base_ref="devel"), {}, NOW) == []
    assert plan_pull(TMAP, "org/nothing", pull(), {}, NOW) == []


# --- pull requests that get nothing ---------------------------------------------------------------

INACTIVE = [
    ("closed", dict(state="closed"), "the pull request is closed"),
    ("merged", dict(state="closed", merged=True), "the pull request is merged"),
    ("draft", dict(draft=True), "the pull request is a draft"),
    ("labelled no-test", dict(labels=["bug", "no-test"]), "the pull request is labelled no-test"),
    ("label objects", dict(labels=[{"name": "no-test"}]), "the pull request is labelled no-test"),
]


@pytest.mark.parametrize("label, changes, why", INACTIVE, ids=[i[0] for i in INACTIVE])
def test_inactive_pull_requests_get_nothing(label, changes, why):
    review = review_pull(TMAP, "org/two", pull(**changes), {"ctx/b": ours("error", 1, reason="x")}, NOW,
                         commands=[command("retest"), command("approve")])
    assert review.actions == []
    assert review.inactive == why


@pytest.mark.parametrize("label, changes, why", INACTIVE, ids=[i[0] for i in INACTIVE])
def test_inactive_pull_requests_still_have_expired_statuses_reaped(label, changes, why):
    given = {"ctx/a": ours("running", 1, deadline=PAST), "ctx/b": ours("queued", deadline=SOON),
             "ctx/n": ours("queued", 2, deadline=PAST)}
    assert brief(plan_pull(TMAP, "org/two", pull(**changes), given, NOW)) == [
        ("reap", "ctx/a", 1), ("reap", "ctx/n", 2)]


def test_the_skip_label_is_configurable():
    assert plan_pull(TMAP, "org/labels", pull(labels=["skip-ci"]), {}, NOW) == []
    assert brief(plan_pull(TMAP, "org/labels", pull(labels=["no-test"]), {}, NOW)) == [("queue", "ctx/a", 1)]


# --- authors not on the allow-list -------------------------------------------------------------

UNTRUSTED = pull(author="mallory", author_association="FIRST_TIME_CONTRIBUTOR")

APPROVALS = [
    ("no statuses", {}, [], [("approval", "ctx/a", 0), ("approval", "ctx/b", 0)]),
    ("already waiting", {"ctx/a": ours("approval"), "ctx/b": ours("approval")}, [], []),
    ("one waiting, one new", {"ctx/a": ours("approval")}, [], [("approval", "ctx/b", 0)]),
    ("someone else's success", {"ctx/a": foreign("success")}, [], [("approval", "ctx/b", 0)]),
    ("someone else's error", {"ctx/a": foreign("error")}, [], [("approval", "ctx/a", 0), ("approval", "ctx/b", 0)]),
    ("someone else's pending", {"ctx/a": foreign("pending")}, [], [("approval", "ctx/b", 0)]),
    ("/approve by a writer", {"ctx/a": ours("approval"), "ctx/b": ours("approval")}, [command("approve")],
     [("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]),
    ("/approve by a maintainer, no statuses yet", {}, [command("approve", permission="maintain")],
     [("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]),
    ("/approve by an admin naming contexts (names ignored)", {}, [command("approve", ["ctx/a"], permission="admin")],
     [("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]),
    ("/approve by triage", {"ctx/a": ours("approval"), "ctx/b": ours("approval")},
     [command("approve", permission="triage")], []),
    ("/approve by a reader", {}, [command("approve", permission="read")],
     [("approval", "ctx/a", 0), ("approval", "ctx/b", 0)]),
    ("/approve without a known permission", {}, [command("approve", permission=None)],
     [("approval", "ctx/a", 0), ("approval", "ctx/b", 0)]),
    ("/retest by a writer approves too", {"ctx/a": ours("approval"), "ctx/b": ours("approval")},
     [command("retest", ["ctx/a"])], [("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]),
    ("a run started: the commit was approved", {"ctx/a": ours("queued", deadline=SOON), "ctx/b": ours("approval")}, [],
     [("queue", "ctx/b", 1)]),
    ("a finished run: approved", {"ctx/a": ours("failure", reason="x")}, [], [("queue", "ctx/b", 1)]),
    ("an error: approved and re-queued", {"ctx/a": ours("error", reason="x"), "ctx/b": ours("approval")}, [],
     [("queue", "ctx/a", 2), ("queue", "ctx/b", 1)]),
    ("a manual context's run approves", {"ctx/m": ours("success")}, [], [("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]),
]


@pytest.mark.parametrize("label, given, commands, expected", APPROVALS, ids=[a[0] for a in APPROVALS])
def test_untrusted_authors_wait_for_approval(label, given, commands, expected):
    assert brief(plan_pull(TMAP, "org/two", UNTRUSTED, given, NOW, commands=commands)) == expected


def test_approval_actions_post_the_approval_status():
    action = plan_pull(TMAP, "org/two", UNTRUSTED, {}, NOW)[0]
    assert action.status() == {"state": "pending", "target_url": None,
                               "description": "approval · a maintainer's /approve comment starts the tests"}


@pytest.mark.parametrize("author, association, trusted, expected", [
    ("alice", "NONE", None, "queue"),             # listed login
    ("bob", "MEMBER", None, "queue"),             # trusted association
    ("bob", "CONTRIBUTOR", None, "approval"),
    ("bob", "CONTRIBUTOR", True, "queue"),        # the caller decided (e.g. an org member)
    ("alice", "OWNER", False, "approval"),        # the caller's answer wins
    (None, None, None, "approval"),
])
def test_who_is_trusted(author, association, trusted, expected):
    actions = plan_pull(TMAP, "org/one", pull(author=author, author_association=association), {}, NOW,
                        trusted=trusted)
    assert [a.kind for a in actions] == [expected]


# --- /retest ------------------------------------------------------------------------------------

RETESTS = [
    ("bare: not a success", {"ctx/a": ours("success")}, [command()], []),
    ("failure", {"ctx/a": ours("failure", 2, reason="x")}, [command()], [("queue", "ctx/a", 3)]),
    ("bare: not superseded", {"ctx/a": ours("superseded", reason="x")}, [command()], []),
    ("named: superseded", {"ctx/a": ours("superseded", reason="x")}, [command(contexts=["ctx/a"])],
     [("queue", "ctx/a", 2)]),
    ("given up", {"ctx/a": ours("error", 3, reason=GAVE_UP_3)}, [command()], [("queue", "ctx/a", 4)]),
    ("error", {"ctx/a": ours("error", 1, reason="x")}, [command()], [("queue", "ctx/a", 2)]),
    ("no status", {}, [command()], [("queue", "ctx/a", 1)]),
    ("approval", {"ctx/a": ours("approval")}, [command()], [("queue", "ctx/a", 1)]),
    ("queued within its deadline", {"ctx/a": ours("queued", deadline=SOON)}, [command()], []),
    ("running within its deadline", {"ctx/a": ours("running", deadline=SOON)}, [command()], []),
    ("running past its deadline", {"ctx/a": ours("running", deadline=PAST)}, [command()], [("reap", "ctx/a", 1)]),
    ("someone else's pending", {"ctx/a": foreign("pending")}, [command()], []),
    ("bare: not someone else's success", {"ctx/a": foreign("success")}, [command()], []),
    ("someone else's failure", {"ctx/a": foreign("failure")}, [command()], [("queue", "ctx/a", 1)]),
    ("named", {"ctx/a": ours("success")}, [command(contexts=["ctx/a"])], [("queue", "ctx/a", 2)]),
    ("by a maintainer", {"ctx/a": ours("failure", reason="x")}, [command(permission="maintain")], [("queue", "ctx/a", 2)]),
    ("by a reader: refused", {"ctx/a": ours("failure", reason="x")}, [command(permission="read")], []),
    ("by triage: refused", {"ctx/a": ours("failure", reason="x")}, [command(permission="triage")], []),
    ("status written after the command", {"ctx/a": ours("failure", reason="x", updated="2024-05-01T11:55:00Z")}, [command()], []),
    ("status written at the command's second", {"ctx/a": ours("failure", reason="x", updated=COMMAND_TIME)}, [command()], []),
    ("no command time: status age unknown", {"ctx/a": ours("failure", reason="x", updated="2024-05-01T11:55:00Z")},
     [command(created_at=None)], [("queue", "ctx/a", 2)]),
    ("status without a time", {"ctx/a": dict(ours("failure", reason="x"), updated_at=None)}, [command()], [("queue", "ctx/a", 2)]),
    ("twice in one scan", {"ctx/a": ours("failure", reason="x")}, [command(), command(user="other")], [("queue", "ctx/a", 2)]),
    ("a manual context by name", {"ctx/a": ours("success")}, [command(contexts=["ctx/m"])], [("queue", "ctx/m", 1)]),
    ("a manual context again", {"ctx/a": ours("success"), "ctx/m": ours("failure", reason="x")},
     [command(contexts=["ctx/m"])], [("queue", "ctx/m", 2)]),
    ("all: manual contexts only by name", {"ctx/a": ours("failure", reason="x"), "ctx/m": ours("failure", reason="x")},
     [command()], [("queue", "ctx/a", 2)]),
    ("an unknown context only", {"ctx/a": ours("success")}, [command(contexts=["ctx/zzz"])], []),
    ("/RETEST spelled otherwise", {"ctx/a": ours("failure", reason="x")}, [dict(command(), command="/Retest")],
     [("queue", "ctx/a", 2)]),
]


@pytest.mark.parametrize("label, given, commands, expected", RETESTS, ids=[r[0] for r in RETESTS])
def test_retest(label, given, commands, expected):
    assert brief(plan_pull(TMAP, "org/one", pull(), given, NOW, commands=commands)) == expected


def test_manual_contexts_with_a_run_follow_the_usual_rules():
    given = {"ctx/a": ours("success"), "ctx/m": ours("error", 1, reason="x"),
             "ctx/n": ours("running", 1, deadline=PAST)}
    assert brief(plan_pull(TMAP, "org/two", pull(), dict(given, **{"ctx/b": ours("success")}), NOW)) == [
        ("queue", "ctx/m", 2), ("reap", "ctx/n", 1)]
    # a manual context waiting for approval is not a run: it is left alone
    assert plan_pull(TMAP, "org/one", pull(), {"ctx/a": ours("success"), "ctx/m": ours("approval")}, NOW) == []


def test_retest_keeps_other_contexts_as_they_are():
    given = {"ctx/a": ours("success"), "ctx/b": ours("failure", reason="x")}
    assert brief(plan_pull(TMAP, "org/two", pull(), given, NOW, commands=[command(contexts=["ctx/b"])])) == [
        ("queue", "ctx/b", 2)]


def test_ignored_commands_are_reported():
    review = review_pull(TMAP, "org/two", pull(), {"ctx/a": ours("success"), "ctx/b": ours("success")}, NOW,
                         commands=[command(permission="read", user="rita"),
                                   command(contexts=["ctx/b", "nope/x"]),
                                   {"command": "deploy", "user": "x", "permission": "admin"}])
    assert brief(review.actions) == [("queue", "ctx/b", 2)]
    assert review.ignored == [
        {"command": "retest", "user": "rita", "contexts": [],
         "why": "@rita has read permission on org/two; /retest needs write or above"},
        {"command": "retest", "user": "maint", "contexts": ["nope/x"],
         "why": "nope/x: not a context of org/two for branch main"},
        {"command": "deploy", "user": "x", "contexts": [], "why": "unknown command 'deploy' (known: retest, approve)"},
    ]


def test_review_explains_what_is_left_alone():
    given = {"ctx/a": ours("running", 2, "w/1", deadline=SOON), "ctx/b": ours("failure", reason="x")}
    review = review_pull(TMAP, "org/two", pull(), given, NOW)
    assert review.actions == [] and review.inactive is None
    assert review.skipped == {"ctx/a": "running (attempt 2) until 2024-05-01T12:05Z",
                              "ctx/b": "finished: failure (attempt 1)"}


def test_an_immediate_rescan_after_carrying_out_a_plan_does_nothing():
    given = {"ctx/b": ours("error", 1, reason="x"), "ctx/m": ours("running", 1, deadline=PAST)}
    commands = [command(contexts=["ctx/n"])]
    actions = plan_pull(TMAP, "org/two", pull(), given, NOW, commands=commands)
    assert brief(actions) == [("queue", "ctx/a", 1), ("queue", "ctx/b", 2), ("reap", "ctx/m", 1),
                              ("queue", "ctx/n", 1)]
    posted = dict(given)
    for action in actions:
        posted[action.context] = dict(action.status(), updated_at="2024-05-01T12:00:00Z")
    # the same command delivered again, right after: nothing is queued twice
    again = plan_pull(TMAP, "org/two", pull(), posted, NOW, commands=commands)
    assert brief(again) == [("queue", "ctx/m", 2)]  # only the reaped one, as documented
    posted["ctx/m"] = dict(again[0].status(), updated_at="2024-05-01T12:00:01Z")
    assert plan_pull(TMAP, "org/two", pull(), posted, NOW, commands=commands) == []


# --- branch heads -------------------------------------------------------------------------------

def test_plan_ref_needs_no_approval_and_accepts_refs():
    assert brief(plan_ref(TMAP, "org/two", "refs/heads/main", SHA, {}, NOW)) == [
        ("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]
    assert brief(plan_ref(TMAP, "org/two", "stable-1", SHA, {"ctx/a": ours("error", reason="x")}, NOW)) == [
        ("queue", "ctx/a", 2)]
    assert plan_ref(TMAP, "org/two", "devel", SHA, {}, NOW) == []


def test_plan_ref_takes_commands_from_the_operator():
    review = review_ref(TMAP, "org/one", "main", SHA, {"ctx/a": ours("success")}, NOW,
                        commands=[command(contexts=["ctx/a", "ctx/m"], user="operator", permission="admin")])
    assert brief(review.actions) == [("queue", "ctx/a", 2), ("queue", "ctx/m", 1)]


# --- job ids -------------------------------------------------------------------------------------

def test_job_ids_are_deterministic_and_readable():
    ident = job_id("org/proj", SHA, "debian-12/default", 2)
    assert ident == job_id("org/proj", SHA, "debian-12/default", 2)
    assert ident.startswith("test-org_proj_debian-12_default-0123456789ab-")
    assert ident.endswith("-a2")
    assert jobs.ID_RE.match(ident)


def test_job_ids_differ_by_every_part():
    base = ("org/proj", SHA, "debian-12/default", 1)
    variants = [("org/proj2",) + base[1:], (base[0], "f" * 40) + base[2:],
                base[:2] + ("debian-12/other", 1), base[:3] + (2,)]
    ids = set(job_id(*v) for v in [base] + variants)
    assert len(ids) == 5


def test_job_ids_ignore_the_case_of_the_repository():
    assert job_id("Org/Proj", SHA, "c", 1) == job_id("org/proj", SHA, "c", 1)


def test_long_names_stay_valid_and_unique():
    repo = "o" * 39 + "/" + "n" * 100
    first = job_id(repo, SHA, "x" * 200 + "/one", 1)
    second = job_id(repo, SHA, "x" * 200 + "/two", 1)
    for ident in (first, second):
        assert len(ident) <= 128 and jobs.ID_RE.match(ident)
    assert first != second
    assert job_id(repo, SHA, "c", 123456).endswith("-a123456")


def test_job_ids_from_odd_names_are_valid():
    for repo, context in [("a/.hidden", "x"), ("a-b/c_d.e", "..x/_y"), ("a/b", "-")]:
        ident = job_id(repo, "A" * 64, context, 1)
        assert jobs.ID_RE.match(ident), ident


@pytest.mark.parametrize("attempt", [0, -1, "1", True, None])
def test_job_ids_need_a_positive_attempt(attempt):
    with pytest.raises(ValueError):
        job_id("a/b", SHA, "c", attempt)


def test_an_action_has_no_deadline_or_host_unless_given():
    action = Action("approval", "c", 0, "why", None)
    assert action.deadline is None and action.host is None


IMAGE_TMAP = parse_testmap({"repos": {"org/img": {"branches": {"main": [
    "debian-12/default", "debian-12/kvm", "fedora-41/default",
    {"context": "unit/debian", "image": "debian-12"}]}, "manual": ["debian-12/expensive"]}}})


def test_a_retest_of_the_contexts_that_boot_an_image():
    untrusted = pull(author="testfleet-bot", author_association="NONE")
    waiting = dict((name, ours("approval", updated="2024-05-01T11:55:00Z"))
                   for name in ("debian-12/default", "debian-12/kvm", "fedora-41/default", "unit/debian"))
    refresh = dict(command(user="operator:image-refresh", permission="admin"), images=["debian-12"])
    review = review_pull(IMAGE_TMAP, "org/img", untrusted, waiting, NOW, commands=[refresh])
    # a retest by an operator approves the commit, as any retest by a writer: every automatic
    # context runs (the approval statuses written after the command's time are no run of it)
    assert brief(review.actions) == [("queue", "debian-12/default", 1), ("queue", "debian-12/kvm", 1),
                                     ("queue", "fedora-41/default", 1), ("queue", "unit/debian", 1)]
    # on a commit that ran already, only the contexts booting debian-12 (by name or by their
    # image key) run again; the manual one is not named
    ran = dict((name, ours("success")) for name in waiting)
    assert brief(plan_pull(IMAGE_TMAP, "org/img", untrusted, ran, NOW, commands=[refresh])) == [
        ("queue", "debian-12/default", 2), ("queue", "debian-12/kvm", 2), ("queue", "unit/debian", 2)]
    assert review.ignored == []
    # once queued (after the command's time), the same command again queues nothing
    queued = dict((name, ours("queued", deadline=SOON, updated="2024-05-01T11:56:00Z")) for name in waiting)
    assert plan_pull(IMAGE_TMAP, "org/img", untrusted, queued, NOW, commands=[refresh]) == []


def test_a_retest_of_an_image_no_context_boots_is_reported():
    review = review_pull(IMAGE_TMAP, "org/img", pull(author="bot"), {}, NOW,
                         commands=[dict(command(user="operator:x", permission="admin"), images=["centos-9"])])
    assert review.ignored == [{"command": "retest", "user": "operator:x", "contexts": [], "images": ["centos-9"],
                               "why": "no context of org/img for branch main uses the image(s) centos-9"}]
