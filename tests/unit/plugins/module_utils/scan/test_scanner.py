"""The Scanner (module_utils/scan/scanner.py), in-process, against the fake GitHub
(tests/fake_github/) and a publisher that records what it is given: no broker.

Each ``scan(...)`` is one run, as the module makes it: a new ForgeClient on the same ETag cache,
the scan state loaded from and saved next to it. The module around the scanner, with the real
broker, is tested in tests/unit/plugins/modules/test_scan.py and tests/integration/test_scan_*.
"""

import datetime
import json
import time

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.forge.client import ForgeClient, ForgeError
from ansible_collections.testfleet.infra.plugins.module_utils.scan.plan import job_id
from ansible_collections.testfleet.infra.plugins.module_utils.scan.scanner import PublishFailed, Scanner
from ansible_collections.testfleet.infra.plugins.module_utils.scan.state import ScanState
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import load_testmap

REPO = "org/proj"
SHA = "1" * 40
SHA2 = "2" * 40
MAIN_SHA = "3" * 40
EXCHANGE = "testfleet"


class RecordingPublisher:
    """A publisher that keeps what it is given, per routing key; ``bound``: the queues that
    exist (others are refused as the broker refuses an unroutable message); ``unreachable``:
    ``ready`` fails as a broker that cannot be reached."""

    def __init__(self, bound):
        self.bound = set(bound)
        self.unreachable = False
        self.messages = []
        self.ready_calls = 0

    def ready(self):
        self.ready_calls += 1
        if self.unreachable:
            raise amqp.BrokerUnreachable("cannot reach the broker at amqp://127.0.0.1:1/: connection refused")

    def publish(self, exchange, routing_key, body, message_id=None):
        assert exchange == EXCHANGE
        if routing_key not in self.bound:
            raise amqp.PublishRefused("no queue is bound to exchange %r with routing key %r: the message was "
                                      "returned, not stored" % (exchange, routing_key))
        self.messages.append((routing_key, message_id, json.loads(body)))

    def take(self, queue):
        """Every message published to ``queue`` since the last take: [(message_id, job)]."""
        taken = [(ident, job) for key, ident, job in self.messages if key == queue]
        self.messages = [m for m in self.messages if m[0] != queue]
        return taken


class Queues:
    public, internal = "tests.public", "tests.internal"


@pytest.fixture
def broker():
    publisher = RecordingPublisher([Queues.public, Queues.internal])
    publisher.public, publisher.internal = Queues.public, Queues.internal
    return publisher


def command(**fields):
    """A command as the module's argument spec completes it."""
    return dict({"contexts": [], "images": [], "created_at": None}, **fields)


@pytest.fixture
def scan(github, broker, testmap, tmp_path):
    """One scan run: ``scan(repo=..., check_mode=..., fresh=..., rebuild=..., now=...)`` returns
    the scanner's result with ``requests``, ``diff`` and ``warnings``; with ``fails=SomeError``
    the run must raise it, and the result also has ``error`` (the exception)."""
    cache = str(tmp_path / "etags")

    def run(check_mode=False, fresh=False, rebuild=False, now=None, fails=None, testmap_path=None, **options):
        now = now or datetime.datetime.now(datetime.timezone.utc)
        client = ForgeClient(api_url=github.url, token=github.token, etag_cache_dir=cache, retries=0)
        state = ScanState.load(cache)
        scanner = Scanner(load_testmap(testmap_path or testmap), client, broker, EXCHANGE, now, state,
                          check_mode=check_mode, fresh=fresh, rebuild=rebuild)
        error = None
        try:
            if fails is None:
                scanner.scan(**options)
            else:
                with pytest.raises(fails) as info:
                    scanner.scan(**options)
                error = info.value
        finally:
            state.save(now.timestamp())
        result = dict(scanner.result, requests=dict(client.stats), diff=scanner.diff, warnings=scanner.warnings,
                      state_problem=state.problem)
        if error is not None:
            result["error"] = error
        return result
    return run


def described(github, sha, context):
    """The newest status of ``context`` on ``sha``, parsed."""
    posted = github.statuses(REPO, sha, context)
    return statuses.parse(posted[-1]) if posted else None


def iso(seconds_from_now):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds_from_now))


def test_a_first_scan_queues_each_context_once_and_a_rescan_nothing(scan, github, broker):
    github.add_pull(REPO, 4, SHA, author="alice", author_association="NONE")
    result = scan(repo=REPO)
    assert result["changed"] is True
    assert sorted((q["context"], q["attempt"]) for q in result["queued"]) == [("ctx/a", 1), ("ctx/b", 1)]
    public, internal = broker.take(broker.public), broker.take(broker.internal)
    assert [m[0] for m in public] == [job_id(REPO, SHA, "ctx/a", 1)]
    assert [m[0] for m in internal] == [job_id(REPO, SHA, "ctx/b", 1)]
    assert public[0][1] == {"version": 1, "id": job_id(REPO, SHA, "ctx/a", 1), "kind": "test", "repo": REPO,
                            "sha": SHA, "pull": 4, "context": "ctx/a", "timeout": 600,
                            "report": {"github": {"context": "ctx/a", "attempt": 1}}}
    assert internal[0][1]["args"] == {"command": ["make", "check"]}
    assert internal[0][1]["timeout"] == 900
    for context in ("ctx/a", "ctx/b"):
        [posted] = github.statuses(REPO, SHA, context)
        parsed = statuses.parse(posted)
        assert (posted["state"], parsed.kind, parsed.attempt) == ("pending", "queued", 1)
        expected = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3600)
        assert abs((parsed.deadline - expected).total_seconds()) < 120
    assert github.statuses(REPO, SHA, "ctx/m") == []
    assert result["requests"]["writes"] == 2

    again = scan(repo=REPO)
    assert again["changed"] is False
    assert again["queued"] == [] and again["plan"][0]["actions"] == []
    assert again["requests"]["writes"] == 0
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []
    assert len(github.statuses(REPO, SHA)) == 2

    # nothing changed since: the pulls list is answered 304 from the ETag cache, the commit is not
    # read at all (the scan state shows it queued within its deadline); what counts is the branch
    # the test map names, which does not exist (a 404 has no ETag; the scanner warns)
    github.reset_records()
    third = scan(repo=REPO)
    assert third["changed"] is False
    assert third["warnings"] == ["org/proj: the test map names the branch main, which does not exist"]
    assert third["plan"][0]["cached"] is True
    assert third["requests"]["not_modified"] == 1
    assert [(r["path"], r["status"]) for r in github.requests] == [
        ("/repos/org/proj/pulls", 304), ("/repos/org/proj/branches/main", 404)]


def test_the_queued_status_is_posted_before_the_job_is_published(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.inject("POST", r"/statuses/", 422, body={"message": "Validation Failed"})
    result = scan(repo=REPO, pull=4, fails=ForgeError)
    assert result["error"].status == 422
    # the status of the first context could not be posted: its job was not published either
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []
    assert result["queued"] == []


def test_without_a_repo_every_repository_of_the_test_map_is_scanned(scan, github, broker, testmap):
    github.add_pull(REPO, 4, SHA)
    result = scan(check_mode=True)
    assert [(p["repo"], p["pull"]) for p in result["plan"]] == [(REPO, 4)]
    github.reset_records()
    other = scan(repo="org/unknown")
    assert other["changed"] is False
    assert other["plan"] == []
    assert other["warnings"] == ["org/unknown is not in the test map %s: nothing to test" % testmap]
    assert github.requests == []


def test_an_error_is_requeued_with_the_next_attempt(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.post_status(REPO, SHA, "error", "ctx/a", description=statuses.describe("error", 1, reason="clone failed"))
    github.post_status(REPO, SHA, "success", "ctx/b", description=statuses.describe("success", 1, host="w/1"))
    result = scan(repo=REPO, pull=4)
    assert [(q["context"], q["attempt"]) for q in result["queued"]] == [("ctx/a", 2)]
    assert [m[0] for m in broker.take(broker.public)] == [job_id(REPO, SHA, "ctx/a", 2)]
    assert broker.take(broker.internal) == []
    assert described(github, SHA, "ctx/a")[:2] == ("queued", 2)
    assert result["plan"][0]["skipped"] == {"ctx/b": "finished: success (attempt 1)"}


def test_the_last_error_is_given_up(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.post_status(REPO, SHA, "error", "ctx/a", description=statuses.describe("error", 3, reason="clone failed"))
    github.post_status(REPO, SHA, "failure", "ctx/b", description=statuses.describe("failure", 1, reason="x"))
    result = scan(repo=REPO, pull=4)
    assert result["queued"] == []
    assert [(g["context"], g["attempt"]) for g in result["gave_up"]] == [("ctx/a", 3)]
    assert described(github, SHA, "ctx/a").reason == "gave up after 3 attempts: clone failed"
    assert scan(repo=REPO, pull=4)["changed"] is False


def test_a_queued_status_past_its_deadline_is_reaped_then_requeued(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    github.post_status(REPO, SHA, "pending", "ctx/a", description=statuses.describe("queued", 1, deadline=past))
    github.post_status(REPO, SHA, "success", "ctx/b", description=statuses.describe("success", 1))
    result = scan(repo=REPO, pull=4)
    assert result["changed"] is True and result["queued"] == []
    [reaped] = result["reaped"]
    assert (reaped["context"], reaped["attempt"], reaped["pull"]) == ("ctx/a", 1, 4)
    assert reaped["reason"].startswith("deadline passed (queued until ")
    posted = github.statuses(REPO, SHA, "ctx/a")[-1]
    assert posted["state"] == "error" and posted["description"].startswith("error · attempt 1 · deadline passed")
    assert broker.take(broker.public) == []

    following = scan(repo=REPO, pull=4)
    assert [(q["context"], q["attempt"]) for q in following["queued"]] == [("ctx/a", 2)]
    assert [m[0] for m in broker.take(broker.public)] == [job_id(REPO, SHA, "ctx/a", 2)]


def test_an_untrusted_author_waits_for_approve_from_a_writer(scan, github, broker):
    github.add_pull(REPO, 4, SHA, author="mallory", author_association="FIRST_TIME_CONTRIBUTOR")
    first = scan(repo=REPO)
    assert first["queued"] == []
    assert sorted(a["context"] for a in first["approval"]) == ["ctx/a", "ctx/b"]
    for context in ("ctx/a", "ctx/b"):
        posted = github.statuses(REPO, SHA, context)
        assert [(p["state"], p["description"]) for p in posted] == [
            ("pending", "approval · a maintainer's /approve comment starts the tests")]
    assert scan(repo=REPO)["changed"] is False      # not posted twice
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []

    refused = scan(repo=REPO, pull=4, commands=[command(command="approve", user="rita")])
    assert refused["changed"] is False and refused["queued"] == []
    assert refused["refused"][0]["why"] == "@rita has read permission on org/proj; /approve needs write or above"

    approved = scan(repo=REPO, pull=4, commands=[command(command="approve", user="maint")])
    assert sorted((q["context"], q["attempt"]) for q in approved["queued"]) == [("ctx/a", 1), ("ctx/b", 1)]
    assert len(broker.take(broker.public)) == 1 and len(broker.take(broker.internal)) == 1
    # the commit stays approved for later scans without the command; a new push needs a new /approve
    assert scan(repo=REPO)["changed"] is False
    github.update_pull(REPO, 4, head_sha=SHA2)
    moved = scan(repo=REPO)
    assert sorted(a["context"] for a in moved["approval"]) == ["ctx/a", "ctx/b"]


def test_an_org_member_is_trusted(scan, github, tmp_path, testmap, broker):
    with open(testmap, "a") as handle:
        handle.write("    allow: {orgs: [friends]}\n")
    github.add_org_member("friends", "carol")
    github.add_pull(REPO, 4, SHA, author="carol", author_association="CONTRIBUTOR")
    result = scan(repo=REPO)
    assert len(result["queued"]) == 2 and result["approval"] == []


def test_retest_from_a_reader_is_refused_and_from_a_writer_runs_once(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.post_status(REPO, SHA, "failure", "ctx/a", description=statuses.describe("failure", 1, reason="x"))
    github.post_status(REPO, SHA, "success", "ctx/b", description=statuses.describe("success", 1))
    refused = scan(repo=REPO, pull=4, commands=[command(command="retest", user="rita")])
    assert refused["changed"] is False
    assert refused["refused"] == [{"command": "retest", "user": "rita", "contexts": [],
                                   "why": "@rita has read permission on org/proj; /retest needs write or above"}]
    assert broker.take(broker.public) == []

    retest = command(command="retest", user="maint", contexts=["ctx/a", "ctx/m"], created_at=iso(1))
    time.sleep(1.1)  # the command comes after the statuses above (GitHub's times have seconds)
    result = scan(repo=REPO, pull=4, commands=[retest])
    assert sorted((q["context"], q["attempt"]) for q in result["queued"]) == [("ctx/a", 2), ("ctx/m", 1)]
    assert sorted(m[0] for m in broker.take(broker.public)) == sorted(
        [job_id(REPO, SHA, "ctx/a", 2), job_id(REPO, SHA, "ctx/m", 1)])
    # the same comment delivered again: nothing more
    assert scan(repo=REPO, pull=4, commands=[retest])["changed"] is False
    assert broker.take(broker.public) == []


def test_an_operator_retest_needs_no_github_permission(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.post_status(REPO, SHA, "success", "ctx/a", description=statuses.describe("success", 1))
    requests_before = len(github.requests)
    result = scan(repo=REPO, pull=4, commands=[command(command="retest", user="operator:root", contexts=["ctx/a"])])
    # ctx/b had no status: queued as any scan would
    assert sorted((q["context"], q["attempt"]) for q in result["queued"]) == [("ctx/a", 2), ("ctx/b", 1)]
    assert not any("/permission" in r["path"] for r in github.requests[requests_before:])
    assert [m[0] for m in broker.take(broker.public)] == [job_id(REPO, SHA, "ctx/a", 2)]


def test_check_mode_plans_without_posting_or_publishing(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    result = scan(check_mode=True, repo=REPO)
    assert result["changed"] is True
    assert [(a["kind"], a["context"], a["attempt"]) for a in result["plan"][0]["actions"]] == [
        ("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]
    assert result["queued"] == []
    assert github.statuses(REPO, SHA) == []
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []
    key = "%s@%s ctx/a" % (REPO, SHA)
    assert result["diff"]["before"][key] is None
    assert result["diff"]["after"][key].startswith("queued · attempt 1 · deadline ")


def test_branch_heads_and_drafts(scan, github, broker):
    github.set_branch(REPO, "main", MAIN_SHA)
    github.add_pull(REPO, 4, SHA, draft=True)
    github.add_pull(REPO, 5, SHA2, labels=["no-test"])
    result = scan(repo=REPO)
    assert sorted((q["sha"], q["context"]) for q in result["queued"]) == [(MAIN_SHA, "ctx/a"), (MAIN_SHA, "ctx/b")]
    [(message_id, job)] = broker.take(broker.public)
    assert job["ref"] == "refs/heads/main" and "pull" not in job
    inactive = dict((p["pull"], p["inactive"]) for p in result["plan"] if p["pull"])
    assert inactive == {4: "the pull request is a draft", 5: "the pull request is labelled no-test"}


def test_one_commit_by_sha_and_ref(scan, github, broker):
    github.set_branch(REPO, "main", MAIN_SHA)
    github.add_pull(REPO, 4, SHA)
    by_sha = scan(repo=REPO, sha=SHA)
    assert sorted((q["pull"], q["context"]) for q in by_sha["queued"]) == [(4, "ctx/a"), (4, "ctx/b")]
    by_ref = scan(repo=REPO, ref="refs/heads/main", sha=MAIN_SHA, check_mode=True)
    assert [p["ref"] for p in by_ref["plan"]] == ["refs/heads/main"]
    assert github.statuses(REPO, MAIN_SHA) == []


def test_a_job_that_cannot_be_published_gets_an_error_status(scan, github, broker, testmap):
    with open(testmap) as handle:
        text = handle.read()
    with open(testmap, "w") as handle:
        handle.write(text.replace(broker.internal, "tests.missing"))
    github.add_pull(REPO, 4, SHA)
    github.post_status(REPO, SHA, "success", "ctx/a", description=statuses.describe("success", 1))
    result = scan(repo=REPO, pull=4, fails=PublishFailed)
    assert result["changed"] is True
    assert str(result["error"]).startswith("the test job could not be published: no queue is bound to exchange")
    posted = github.statuses(REPO, SHA, "ctx/b")
    assert [statuses.parse(p).kind for p in posted] == ["queued", "error"]
    assert statuses.parse(posted[-1]).reason.startswith("the test job could not be published")


def test_an_unreachable_broker_posts_no_queued_status(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    broker.unreachable = True
    result = scan(repo=REPO, fails=amqp.BrokerUnreachable)
    assert result["queued"] == [] and result["changed"] is False
    assert github.statuses(REPO, SHA) == []


def test_a_scan_with_nothing_to_publish_needs_no_broker(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    for context in ("ctx/a", "ctx/b"):
        github.post_status(REPO, SHA, "success", context, description=statuses.describe("success", 1))
    broker.unreachable = True
    result = scan(repo=REPO)
    assert result["changed"] is False and broker.ready_calls == 0


def test_github_errors_fail_clearly(scan, github):
    github.add_pull(REPO, 4, SHA)
    github.inject("GET", r"/commits/.*/status$", 404)
    result = scan(repo=REPO, pull=4, fails=ForgeError)
    assert result["error"].status == 404
    assert github.token not in str(result["error"])


# --- the scan state: cheap periodic rescans, reads where something may be due -------------------

def status_reads(github):
    """The shas whose combined status was asked for, in order."""
    return [r["path"].split("/")[5] for r in github.requests if r["path"].endswith("/status")]


def test_an_unchanged_rescan_reads_no_commit_and_costs_almost_nothing(scan, github, broker):
    github.set_branch(REPO, "main", MAIN_SHA)
    for number in range(1, 6):
        github.add_pull(REPO, number, "%040x" % number)
    first = scan(repo=REPO)
    assert len(first["queued"]) == 12 and all(not p["cached"] for p in first["plan"])
    assert len(broker.take(broker.public)) == 6 and len(broker.take(broker.internal)) == 6

    github.reset_records()
    again = scan(repo=REPO)
    assert again["changed"] is False and again["queued"] == []
    assert [p["cached"] for p in again["plan"]] == [True] * 6
    assert again["plan"][0]["skipped"]["ctx/a"].startswith("queued (attempt 1) until ")
    assert github.counted <= 5 and again["requests"]["counted"] == github.counted
    assert status_reads(github) == []
    assert all(r["method"] == "GET" for r in github.requests)
    # the pulls list and the branch head are conditional requests: unchanged, they cost nothing
    assert [(r["path"], r["status"]) for r in github.requests if not r["query"].get("page")] == [
        ("/repos/org/proj/pulls", 304), ("/repos/org/proj/branches/main", 304)]
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []


def test_a_workers_error_is_picked_up_by_the_scan_of_its_commit(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    scan(repo=REPO)
    broker.take(broker.public), broker.take(broker.internal)
    # a worker reports that ctx/a broke; GitHub sends a status event, whose scan names the sha
    github.post_status(REPO, SHA, "error", "ctx/a", description=statuses.describe(
        "error", 1, host="w/1", reason="the clone failed"))
    github.reset_records()
    periodic = scan(repo=REPO)      # the cache still says queued: the periodic rescan leaves it
    assert periodic["queued"] == [] and status_reads(github) == []

    event = scan(repo=REPO, sha=SHA)
    assert [(q["context"], q["attempt"]) for q in event["queued"]] == [("ctx/a", 2)]
    assert [m[0] for m in broker.take(broker.public)] == [job_id(REPO, SHA, "ctx/a", 2)]
    assert described(github, SHA, "ctx/a")[:2] == ("queued", 2)
    github.reset_records()
    after = scan(repo=REPO)         # the event's scan refreshed the cache: settled again
    assert after["changed"] is False and status_reads(github) == []


def test_when_a_cached_deadline_passes_the_commit_is_read_and_reaped(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.add_pull(REPO, 5, SHA2)
    for context in ("ctx/a", "ctx/b"):
        github.post_status(REPO, SHA2, "success", context, description=statuses.describe("success", 1))
    first = scan(repo=REPO)
    assert sorted((q["pull"], q["context"]) for q in first["queued"]) == [(4, "ctx/a"), (4, "ctx/b")]
    broker.take(broker.public), broker.take(broker.internal)

    # two hours later (queued_timeout is one): no worker took the jobs, no event came
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
    github.reset_records()
    result = scan(repo=REPO, now=later)
    assert status_reads(github) == [SHA]               # PR 5 is finished: not read
    assert sorted((r["pull"], r["context"]) for r in result["reaped"]) == [(4, "ctx/a"), (4, "ctx/b")]
    assert described(github, SHA, "ctx/a").reason.startswith("deadline passed (queued until ")
    # the reap is in the cache: the next rescan reads the commit and re-queues it
    following = scan(repo=REPO, now=later)
    assert sorted((q["context"], q["attempt"]) for q in following["queued"]) == [("ctx/a", 2), ("ctx/b", 2)]


def test_a_pull_request_whose_head_moved_is_read(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.add_pull(REPO, 5, "5" * 40)
    scan(repo=REPO)
    github.update_pull(REPO, 4, head_sha=SHA2)
    github.reset_records()
    result = scan(repo=REPO)
    assert status_reads(github) == [SHA2]
    assert sorted((q["sha"], q["context"]) for q in result["queued"]) == [(SHA2, "ctx/a"), (SHA2, "ctx/b")]
    assert [m[0] for m in broker.take(broker.public)] == [
        job_id(REPO, SHA, "ctx/a", 1), job_id(REPO, "5" * 40, "ctx/a", 1), job_id(REPO, SHA2, "ctx/a", 1)]


def test_fresh_reads_every_commit(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.add_pull(REPO, 5, SHA2)
    scan(repo=REPO)
    github.reset_records()
    result = scan(repo=REPO, fresh=True)
    assert status_reads(github) == [SHA, SHA2]
    assert result["changed"] is False and [p["cached"] for p in result["plan"]] == [False, False]


def test_a_corrupt_scan_state_is_ignored(scan, github, broker, tmp_path):
    github.add_pull(REPO, 4, SHA)
    scan(repo=REPO)
    state_file = tmp_path / "etags" / "scan-state.json"
    assert json.loads(state_file.read_text())["version"] == 1
    state_file.write_text('{"version": 1, "commits": {')
    github.reset_records()
    result = scan(repo=REPO)
    assert result["changed"] is False and result["state_problem"]
    assert status_reads(github) == [SHA]               # no cache: read, and nothing to do
    github.reset_records()
    scan(repo=REPO)                                    # written anew
    assert status_reads(github) == []


def test_rebuild_publishes_queued_jobs_again_with_the_same_id_and_posts_nothing(scan, github, broker):
    github.set_branch(REPO, "main", SHA)               # the PR's head is also the branch's head
    github.add_pull(REPO, 4, SHA)
    github.add_pull(REPO, 5, SHA2)
    first = scan(repo=REPO)
    assert len(first["queued"]) == 4
    lost_public, lost_internal = broker.take(broker.public), broker.take(broker.internal)   # the broker lost them
    # meanwhile: PR 5's ctx/a runs on a worker and its ctx/b broke
    deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    github.post_status(REPO, SHA2, "pending", "ctx/a", description=statuses.describe(
        "running", 1, host="w/1", deadline=deadline))
    github.post_status(REPO, SHA2, "error", "ctx/b", description=statuses.describe("error", 1, reason="broke"))
    posted_before = len(github.statuses(REPO, SHA)) + len(github.statuses(REPO, SHA2))

    planned = scan(repo=REPO, rebuild=True, check_mode=True)
    assert planned["changed"] is True and planned["republished"] == []
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []

    github.reset_records()
    result = scan(repo=REPO, rebuild=True)
    assert status_reads(github) == [SHA, SHA2, SHA]    # implies fresh: every head read
    assert sorted((r["pull"], r["context"], r["attempt"]) for r in result["republished"]) == [
        (4, "ctx/a", 1), (4, "ctx/b", 1)]
    assert [(q["pull"], q["context"], q["attempt"]) for q in result["queued"]] == [(5, "ctx/b", 2)]
    public, internal = broker.take(broker.public), broker.take(broker.internal)
    assert [m[0] for m in public] == [m[0] for m in lost_public if m[1]["sha"] == SHA]
    assert [m[1] for m in public] == [m[1] for m in lost_public if m[1]["sha"] == SHA]   # the same job
    assert [m[0] for m in internal] == [job_id(REPO, SHA, "ctx/b", 1), job_id(REPO, SHA2, "ctx/b", 2)]
    assert internal[0] == lost_internal[0]
    # one post: the re-queue of PR 5's error; the rebuilt contexts got no new status
    assert len(github.statuses(REPO, SHA)) + len(github.statuses(REPO, SHA2)) == posted_before + 1
    assert result["requests"]["writes"] == 1
    assert [a["kind"] for a in result["plan"][0]["actions"]] == ["republish", "republish"]
