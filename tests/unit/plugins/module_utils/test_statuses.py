import datetime

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.statuses import Parsed, describe, parse

UTC = datetime.timezone.utc
DEADLINE = datetime.datetime(2024, 5, 1, 10, 32, tzinfo=UTC)


def status(kind, **kwargs):
    return {"state": statuses.github_state(kind), "description": describe(kind, **kwargs),
            "target_url": None, "updated_at": "2024-05-01T08:00:00Z"}


@pytest.mark.parametrize("kind, state", [
    ("queued", "pending"), ("running", "pending"), ("success", "success"), ("failure", "failure"),
    ("error", "error"), ("superseded", "error"), ("approval", "pending"),
])
def test_github_state_of_every_kind(kind, state):
    assert statuses.github_state(kind) == state


def test_the_vocabulary_is_exactly_the_documented_one():
    assert statuses.KINDS == ("queued", "running", "success", "failure", "error", "superseded", "approval")
    assert set(statuses.GITHUB_STATES) == set(statuses.KINDS)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown status kind 'passed'"):
        statuses.github_state("passed")
    with pytest.raises(ValueError):
        describe("passed")


@pytest.mark.parametrize("kind, kwargs, text", [
    ("queued", dict(deadline=DEADLINE), "queued · attempt 1 · deadline 2024-05-01T10:32Z"),
    ("running", dict(attempt=2, host="worker-1/0", deadline=DEADLINE),
     "running on worker-1/0 · attempt 2 · deadline 2024-05-01T10:32Z"),
    ("success", dict(host="worker-1/0"), "success on worker-1/0 · attempt 1"),
    ("failure", dict(attempt=3, reason="3 tests failed"), "failure · attempt 3 · 3 tests failed"),
    ("error", dict(attempt=2, reason="deadline passed (running until 2024-05-01T10:32Z)"),
     "error · attempt 2 · deadline passed (running until 2024-05-01T10:32Z)"),
    ("superseded", dict(reason="pull request #4 moved on to 0123456789ab"),
     "superseded · attempt 1 · pull request #4 moved on to 0123456789ab"),
    ("approval", {}, "approval · a maintainer's /approve comment starts the tests"),
])
def test_descriptions(kind, kwargs, text):
    assert describe(kind, **kwargs) == text


@pytest.mark.parametrize("kind, kwargs, expected", [
    ("queued", dict(deadline=DEADLINE), Parsed("queued", 1, None, None, DEADLINE)),
    ("running", dict(attempt=7, host="w-1/2", deadline=DEADLINE), Parsed("running", 7, "w-1/2", None, DEADLINE)),
    ("success", dict(attempt=2, host="w-1/2"), Parsed("success", 2, "w-1/2", None, None)),
    ("failure", dict(reason="make check: exit 2"), Parsed("failure", 1, None, "make check: exit 2", None)),
    ("error", dict(attempt=3, reason="gave up after 3 attempts: clone failed"),
     Parsed("error", 3, None, "gave up after 3 attempts: clone failed", None)),
    ("superseded", dict(reason="closed"), Parsed("superseded", 1, None, "closed", None)),
    ("approval", {}, Parsed("approval", 0, None, statuses.APPROVAL_TEXT, None)),
    ("error", dict(host="h", attempt=2, reason="a · reason · with separators"),
     Parsed("error", 2, "h", "a · reason · with separators", None)),
])
def test_round_trip(kind, kwargs, expected):
    assert parse(status(kind, **kwargs)) == expected


def test_deadlines_round_up_to_the_minute_and_become_utc():
    tz = datetime.timezone(datetime.timedelta(hours=2))
    moment = datetime.datetime(2024, 5, 1, 12, 31, 0, 1, tzinfo=tz)
    parsed = parse(status("queued", deadline=moment))
    assert parsed.deadline == DEADLINE  # 10:31:00.000001 UTC rounded up
    assert parsed.deadline >= moment
    assert describe("queued", deadline=1714559520) == "queued · attempt 1 · deadline 2024-05-01T10:32Z"
    assert describe("queued", deadline="2024-05-01T10:32:00Z").endswith("deadline 2024-05-01T10:32Z")
    naive = datetime.datetime(2024, 5, 1, 10, 32)
    assert parse(status("running", deadline=naive)).deadline == DEADLINE


def test_queued_and_running_need_a_deadline():
    with pytest.raises(ValueError, match="a running status needs a deadline"):
        describe("running", host="w")


@pytest.mark.parametrize("attempt", [0, -1, True, "2", 1.5])
def test_attempts_are_positive_whole_numbers(attempt):
    with pytest.raises(ValueError, match="attempt"):
        describe("success", attempt=attempt)


def test_a_long_reason_is_cut_and_the_machine_readable_part_survives():
    reason = "the test suite failed: " + "x" * 500
    text = describe("failure", attempt=12, host="worker-17.example.org/3", reason=reason)
    assert len(text) == 140
    assert text.endswith("…")
    parsed = parse({"state": "failure", "description": text})
    assert (parsed.kind, parsed.attempt, parsed.host) == ("failure", 12, "worker-17.example.org/3")
    assert parsed.reason.startswith("the test suite failed: xxx")


def test_every_description_fits_even_with_everything_at_its_longest():
    host = "h" * 300
    for kind in statuses.KINDS:
        text = describe(kind, attempt=999999, host=host, reason="r " * 200, deadline=DEADLINE)
        assert len(text) <= 140, kind
        parsed = parse({"state": statuses.github_state(kind), "description": text})
        assert parsed.kind == kind
        assert parsed.host == "h" * 59 + "…"
        if kind in statuses.PENDING:
            assert parsed.deadline == DEADLINE


def test_reasons_and_hosts_become_one_line():
    text = describe("error", host="my host\n·x", reason="line one\n  line two\t end")
    assert text == "error on my-host--x · attempt 1 · line one line two end"
    assert parse({"state": "error", "description": text}).host == "my-host--x"


def test_an_empty_reason_is_left_out():
    assert describe("failure", reason=" \n ") == "failure · attempt 1"


@pytest.mark.parametrize("given", [
    None,
    "not a dict",
    {"state": "success", "description": None},
    {"state": "success", "description": "Build passed"},
    {"state": "success", "description": "success"},                          # no attempt
    {"state": "pending", "description": "queued · attempt 1"},               # no deadline
    {"state": "failure", "description": "success · attempt 1"},              # state disagrees
    {"state": "pending", "description": "approval · attempt 1 · waiting"},   # approval has none
    {"state": "error", "description": "error · attempt 1 · deadline 2024-05-01T10:32Z"},
    {"state": "pending", "description": "queued · attempt 1 · deadline 2024-13-01T10:32Z"},
    {"state": "success", "description": "successful · attempt 1"},
    {"state": "pending", "description": "Waiting for status to be reported"},
])
def test_statuses_testfleet_did_not_write_parse_to_none(given):
    assert parse(given) is None


def test_gave_up_is_recognised():
    assert parse(status("error", attempt=3, reason=statuses.GAVE_UP % 3 + ": clone failed")).gave_up
    assert not parse(status("error", attempt=2, reason="clone failed")).gave_up
    assert not parse(status("failure", reason="gave up after 3 attempts")).gave_up


def test_status_for_is_what_gets_posted():
    assert statuses.status_for("running", attempt=2, host="w/1", deadline=DEADLINE,
                               target_url="https://logs.example.org/x/log.html") == {
        "state": "pending", "description": "running on w/1 · attempt 2 · deadline 2024-05-01T10:32Z",
        "target_url": "https://logs.example.org/x/log.html"}


def test_utc_reads_the_forms_github_and_callers_use():
    assert statuses.utc("2024-05-01T10:32:00Z") == DEADLINE
    assert statuses.utc("2024-05-01T12:32:00+02:00") == DEADLINE
    assert statuses.utc(None) is None
    with pytest.raises(TypeError):
        statuses.utc([])
