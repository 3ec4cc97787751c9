"""The scan state (plugins/module_utils/scan/state.py): what it keeps, what it trusts, its file."""

import datetime
import json
import os
import stat

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.scan import state as scan_state

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.scan.state import ScanState, settled_review
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import parse_testmap

UTC = datetime.timezone.utc
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T = NOW.timestamp()
SOON = NOW + datetime.timedelta(minutes=30)
PAST = NOW - datetime.timedelta(minutes=5)
REPO = "org/proj"
SHA = "a" * 40
SHA2 = "b" * 40

TMAP = parse_testmap({
    "defaults": {"queued_timeout": 3600},
    "allow": {"authors": ["alice"]},
    "repos": {REPO: {"branches": {"main": ["ctx/a", "ctx/b"]}, "manual": ["ctx/m"]}},
})


def ours(kind, attempt=1, reason=None, deadline=None):
    return {"state": statuses.github_state(kind), "target_url": None, "updated_at": "2024-05-01T11:00:00Z",
            "description": statuses.describe(kind, attempt=attempt, reason=reason, deadline=deadline)}


def pull(**changes):
    base = {"number": 4, "state": "open", "draft": False, "merged": False, "head_sha": SHA, "head_ref": "feature",
            "base_ref": "main", "author": "alice", "author_association": "NONE", "labels": []}
    base.update(changes)
    return base


def settled(known, **pull_changes):
    return settled_review(TMAP, REPO, known, NOW, pull=pull(**pull_changes)) is not None


# --- what counts as settled -------------------------------------------------------------------

@pytest.mark.parametrize("label, a, expected", [
    ("success", ours("success"), True),
    ("failure", ours("failure", reason="x"), True),
    ("superseded", ours("superseded", reason="moved on"), True),
    ("given up", ours("error", 3, reason="gave up after 3 attempts: clone failed"), True),
    ("queued within its deadline", ours("queued", deadline=SOON), True),
    ("running within its deadline", ours("running", 2, deadline=SOON), True),
    ("queued past its deadline", ours("queued", deadline=PAST), False),
    ("running past its deadline", ours("running", deadline=PAST), False),
    ("an error to re-queue", ours("error", 1, reason="clone failed"), False),
    ("no status", None, False),
])
def test_a_commit_is_settled_when_the_planner_has_nothing_to_do(label, a, expected):
    known = {"ctx/b": ours("success")}
    if a is not None:
        known["ctx/a"] = a
    assert settled(known) is expected, label


def test_approval_is_settled_until_an_approve_comment_whose_scan_reads_anyway():
    waiting = {"ctx/a": ours("approval"), "ctx/b": ours("approval")}
    assert settled(waiting, author="mallory", author_association="FIRST_TIME_CONTRIBUTOR")
    # no status yet for an untrusted author: the approval must be posted, so the commit is read
    assert not settled({}, author="mallory", author_association="FIRST_TIME_CONTRIBUTOR")


def test_the_pull_request_and_test_map_as_they_are_now_decide():
    known = {"ctx/a": ours("success")}       # ctx/b, added to the test map since, has no status
    assert not settled(known)
    assert settled(known, draft=True)       # a draft gets nothing: no need to read it
    assert settled(known, labels=["no-test"])
    assert not settled({"ctx/a": ours("queued", deadline=PAST)}, draft=True)   # still reaped
    other = parse_testmap({"repos": {REPO: {"branches": {"main": ["ctx/a"]}}}})
    assert settled_review(other, REPO, known, NOW, pull=pull()) is not None
    assert settled_review(other, REPO, known, NOW, branch="main") is not None
    assert settled_review(other, REPO, {}, NOW, branch="main") is None


def test_a_manual_context_that_ran_counts_like_the_others():
    known = {"ctx/a": ours("success"), "ctx/b": ours("success")}
    assert settled(dict(known, **{"ctx/m": ours("failure", reason="x")}))
    assert not settled(dict(known, **{"ctx/m": ours("error", 1, reason="broke")}))


def test_unknown_is_not_settled():
    assert settled_review(TMAP, REPO, None, NOW, pull=pull()) is None


# --- remembering -----------------------------------------------------------------------------

def test_a_read_is_trusted_for_max_age(tmp_path):
    state = ScanState.load(str(tmp_path))
    assert state.statuses(REPO, SHA, T) is None
    state.remember_read(REPO, SHA, {"ctx/a": dict(ours("success"), creator="bot", id=7)}, T)
    assert state.statuses(REPO, SHA, T) == {"ctx/a": {k: ours("success")[k] for k in scan_state.STATUS_FIELDS}}
    assert state.statuses("ORG/Proj", SHA.upper(), T) is not None     # GitHub's names ignore case
    assert state.statuses(REPO, SHA, T + scan_state.MAX_AGE - 1) is not None
    assert state.statuses(REPO, SHA, T + scan_state.MAX_AGE) is None
    assert state.statuses(REPO, SHA, T - 3600) is None                 # read "in the future": a clock jump
    assert state.statuses(REPO, SHA2, T) is None


def test_posts_update_a_commit_read_before_only(tmp_path):
    state = ScanState.load(str(tmp_path))
    queued = statuses.status_for("queued", attempt=2, deadline=SOON)
    state.remember_post(REPO, SHA, "ctx/a", queued, T)
    assert state.statuses(REPO, SHA, T) is None
    state.remember_read(REPO, SHA, {"ctx/a": ours("error", 1, reason="x")}, T)
    state.remember_post(REPO, SHA, "ctx/a", queued, T + 5, updated_at="2024-05-01T12:00:05Z")
    known = state.statuses(REPO, SHA, T + 10)
    assert statuses.parse(known["ctx/a"])[:2] == ("queued", 2)
    assert known["ctx/a"]["updated_at"] == "2024-05-01T12:00:05Z"


def test_save_and_load(tmp_path):
    state = ScanState.load(str(tmp_path))
    state.remember_read(REPO, SHA, {"ctx/a": ours("success")}, T)
    assert state.save(T) is None
    path = tmp_path / scan_state.STATE_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = ScanState.load(str(tmp_path))
    assert again.problem is None
    assert again.statuses(REPO, SHA, T) == state.statuses(REPO, SHA, T)
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp")] == []


def test_without_a_directory_nothing_is_kept():
    state = ScanState.load(None)
    state.remember_read(REPO, SHA, {}, T)
    assert state.save(T) is None
    assert state.statuses(REPO, SHA, T) == {}


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[]", b'{"version": 99, "commits": {}}',
                                     b'{"version": 1, "commits": []}'])
def test_a_corrupt_file_is_no_cache_and_is_written_anew(tmp_path, content):
    path = tmp_path / scan_state.STATE_FILE
    path.write_bytes(content)
    state = ScanState.load(str(tmp_path))
    assert state.problem and len(state) == 0
    state.remember_read(REPO, SHA, {"ctx/a": ours("success")}, T)
    assert state.save(T) is None
    assert ScanState.load(str(tmp_path)).statuses(REPO, SHA, T) is not None


def test_a_bad_entry_is_skipped_alone(tmp_path):
    good = {"repo": REPO, "sha": SHA, "read_at": T, "changed_at": T, "statuses": {"ctx/a": ours("success")}}
    bad = [dict(good, sha=SHA2, read_at="yesterday"), dict(good, sha="c" * 40, statuses={"ctx/a": "success"}),
           dict(good, sha="d" * 40, statuses={"ctx/a": {"state": 1}}), "nonsense"]
    commits = dict(("k%d" % n, entry) for n, entry in enumerate([good] + bad))
    (tmp_path / scan_state.STATE_FILE).write_text(json.dumps({"version": 1, "commits": commits}))
    state = ScanState.load(str(tmp_path))
    assert state.problem is None and len(state) == 1
    assert state.statuses(REPO, SHA, T) is not None


def test_old_entries_and_forgotten_heads_are_dropped(tmp_path):
    state = ScanState.load(str(tmp_path))
    state.remember_read(REPO, SHA, {}, T - scan_state.MAX_AGE - 1)
    state.remember_read(REPO, SHA2, {}, T)
    state.remember_read("org/other", SHA, {}, T)
    state.save(T)
    assert len(ScanState.load(str(tmp_path))) == 2
    state = ScanState.load(str(tmp_path))
    state.forget_others(REPO, [])
    state.forget_repos_except(["ORG/OTHER"])
    state.save(T)
    again = ScanState.load(str(tmp_path))
    assert len(again) == 1 and again.statuses("org/other", SHA, T) == {}


def test_two_processes_merge_by_the_entry_changed_last(tmp_path):
    first, second = ScanState.load(str(tmp_path)), ScanState.load(str(tmp_path))
    first.remember_read(REPO, SHA, {"ctx/a": ours("queued", deadline=SOON)}, T + 10)
    second.remember_read(REPO, SHA, {"ctx/a": ours("error", 1, reason="x")}, T)      # an older read
    second.remember_read(REPO, SHA2, {}, T)
    first.save(T + 10)
    second.save(T + 10)
    merged = ScanState.load(str(tmp_path))
    assert statuses.parse(merged.statuses(REPO, SHA, T + 10)["ctx/a"]).kind == "queued"
    assert merged.statuses(REPO, SHA2, T + 10) == {}
    # a process that drops an entry another one changed since it loaded keeps the change
    dropping, changing = ScanState.load(str(tmp_path)), ScanState.load(str(tmp_path))
    changing.remember_read(REPO, SHA2, {"ctx/a": ours("success")}, T + 20)
    changing.save(T + 20)
    dropping.forget_others(REPO, [SHA])
    dropping.save(T + 20)
    assert ScanState.load(str(tmp_path)).statuses(REPO, SHA2, T + 20) is not None


def test_an_unwritable_directory_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = ScanState(str(blocker / scan_state.STATE_FILE))
    state.remember_read(REPO, SHA, {}, T)
    assert state.save(T).startswith("cannot write the scan state %s" % (blocker / scan_state.STATE_FILE))
