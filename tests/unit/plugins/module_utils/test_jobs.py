import json

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils.jobs import (
    JobError, decode_job, encode_job, validate_job)

SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "0123456789abcdef" * 4

FULL_TEST_JOB = {
    "version": 1, "id": "test-42.debian_12", "kind": "test", "repo": "owner/project.name",
    "sha": SHA1, "ref": "refs/pull/42/head", "pull": 42, "context": "debian-12/default",
    "timeout": 7200, "report": {"status": True}, "args": {"verbose": 1},
}


def job(**fields):
    base = {"version": 1, "id": "job-1", "kind": "image-refresh"}
    base.update(fields)
    return base


def field_error(candidate):
    with pytest.raises(JobError) as info:
        validate_job(candidate)
    return info.value


def test_a_full_test_job_is_valid_and_returned_unchanged():
    assert validate_job(dict(FULL_TEST_JOB)) == FULL_TEST_JOB


@pytest.mark.parametrize("name,value", [
    ("id", "a"), ("id", "A" * 128), ("id", "9.x_y-z"),
    ("kind", "image-refresh"), ("kind", "k9"),
    ("repo", "o/n"), ("repo", "a-b/c.d_e-f"),
    ("sha", SHA1), ("sha", SHA256),
    ("ref", "main"), ("pull", 1), ("context", "fedora-40"), ("context", "a/b/c"),
    ("timeout", 1), ("timeout", jobs.MAX_TIMEOUT),
    ("report", {}), ("args", {"nested": {"x": [1]}}),
])
def test_valid_field_values(name, value):
    assert validate_job(job(**{name: value}))[name] == value


@pytest.mark.parametrize("name,value", [
    ("id", ""), ("id", "-leading-dash"), ("id", "A" * 129), ("id", "has space"), ("id", 7),
    ("kind", "Test"), ("kind", "1abc"), ("kind", "with_underscore"), ("kind", ""),
    ("repo", "noslash"), ("repo", "a/b/c"), ("repo", "o" * 40 + "/n"), ("repo", 5),
    ("sha", SHA1.upper()), ("sha", SHA1[:39]), ("sha", "g" * 40),
    ("ref", ""), ("ref", "   "), ("ref", 3),
    ("pull", 0), ("pull", -1), ("pull", "42"), ("pull", True), ("pull", 1.0),
    ("context", "debian 12"), ("context", "/leading"), ("context", "trailing/"), ("context", ""),
    ("timeout", 0), ("timeout", jobs.MAX_TIMEOUT + 1), ("timeout", "60"), ("timeout", False),
    ("report", []), ("report", "x"), ("args", ["a"]), ("args", 1),
])
def test_invalid_field_values_are_named(name, value):
    error = field_error(job(**{name: value}))
    assert error.field == name
    assert "must be %s" % jobs.FIELDS[name] in str(error)
    assert str(error).startswith("invalid job: field %r" % name)


def test_a_long_bad_value_is_shortened_in_the_message():
    error = field_error(job(context="x " * 100))
    assert error.field == "context"
    assert "..." in str(error) and len(str(error)) < 400


@pytest.mark.parametrize("version", [2, 0, "1", True, 1.0])
def test_only_version_1_is_understood(version):
    error = field_error(job(version=version))
    assert error.field == "version"
    assert "version 1 only" in str(error)


def test_unknown_fields_are_refused_with_the_known_ones_listed():
    error = field_error(job(priority=3, colour="red"))
    assert error.field == "colour"  # the first in sorted order
    assert "is not a job field" in str(error) and "timeout" in str(error)


@pytest.mark.parametrize("missing", ["version", "id", "kind"])
def test_common_required_fields(missing):
    candidate = job()
    del candidate[missing]
    error = field_error(candidate)
    assert error.field == missing
    assert str(error).endswith("is required")


def test_none_counts_as_missing_for_a_required_field():
    assert field_error(job(id=None)).field == "id"


def test_none_is_accepted_for_an_optional_field():
    assert validate_job(job(pull=None, report=None))["pull"] is None


@pytest.mark.parametrize("kind", sorted(jobs.REQUIRED_BY_KIND))
def test_per_kind_required_fields(kind):
    complete = dict((name, FULL_TEST_JOB[name]) for name in jobs.REQUIRED_BY_KIND[kind])
    assert validate_job(job(kind=kind, **complete))
    for name in jobs.REQUIRED_BY_KIND[kind]:
        partial = dict(complete)
        del partial[name]
        error = field_error(job(kind=kind, **partial))
        assert error.field == name
        assert str(error).endswith("is required for %s jobs" % kind)


@pytest.mark.parametrize("value", [[], "job", None, 1])
def test_a_job_must_be_an_object(value):
    error = field_error(value)
    assert error.field == "(message)"
    assert "must be a JSON object" in str(error)


def test_encode_is_compact_sorted_utf8():
    body = encode_job(job(args={"name": "é"}))
    assert body == json.dumps(job(args={"name": "é"}), sort_keys=True,
                              separators=(",", ":")).encode("utf-8")
    assert body.startswith(b'{"args":{"name":"\\u00e9"},"id":"job-1"')


def test_encode_refuses_an_invalid_job():
    with pytest.raises(JobError) as info:
        encode_job(job(pull="x"))
    assert info.value.field == "pull"


@pytest.mark.parametrize("body", [encode_job(FULL_TEST_JOB), encode_job(FULL_TEST_JOB).decode()])
def test_decode_round_trip(body):
    assert decode_job(body) == FULL_TEST_JOB


@pytest.mark.parametrize("body,problem", [
    (b"\xff\xfe", "is not UTF-8"),
    (b"{not json", "is not valid JSON"),
    ("", "is not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
])
def test_decode_errors_concern_the_whole_message(body, problem):
    with pytest.raises(JobError) as info:
        decode_job(body)
    assert info.value.field == "(message)"
    assert problem in str(info.value)


def test_decode_message_parses_without_validating():
    # a work queue carries webhook deliveries too: plugin_utils/events.py maps them
    assert jobs.decode_message(b'{"delivery": "d", "event": "ping"}') == {"delivery": "d", "event": "ping"}
    assert jobs.decode_message("[1, 2]") == [1, 2]
    with pytest.raises(JobError, match="is not UTF-8"):
        jobs.decode_message(b"\xff")


def test_decode_validates_the_job():
    with pytest.raises(JobError) as info:
        decode_job(b'{"version": 1, "id": "x", "kind": "test", "repo": "o/n", "sha": "%s"}'
                   % SHA1.encode())
    assert info.value.field == "context"
