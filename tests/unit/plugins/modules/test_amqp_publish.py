import socket

import pytest

JOB = {"version": 1, "id": "scan-1", "kind": "scan", "repo": "owner/name", "pull": None}


@pytest.fixture
def unreachable_url():
    """A broker URL nothing listens on: any attempt to connect fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "amqp://127.0.0.1:%d/" % sock.getsockname()[1]


def test_an_invalid_job_fails_before_connecting(run_module, unreachable_url):
    result = run_module("amqp_publish", {"url": unreachable_url, "queue": "events",
                                         "job": dict(JOB, kind="test")})
    assert result["failed"] is True
    assert result["msg"] == "invalid job: field 'sha' is required for test jobs"
    assert result["field"] == "sha"


def test_check_mode_validates_without_connecting(run_module, unreachable_url):
    result = run_module("amqp_publish", {"url": unreachable_url, "queue": "events", "job": JOB},
                        check_mode=True, diff=True)
    assert "failed" not in result
    assert result["changed"] is True
    assert (result["message_id"], result["queue"], result["exchange"]) == ("scan-1", "events", "testfleet")
    assert result["job"] == JOB
    assert result["diff"] == {"before": {}, "after": JOB}


def test_check_mode_still_refuses_an_invalid_job(run_module, unreachable_url):
    result = run_module("amqp_publish", {"url": unreachable_url, "queue": "events",
                                         "job": dict(JOB, colour="red")}, check_mode=True)
    assert result["failed"] is True and result["field"] == "colour"


def test_an_unreachable_broker_fails_clearly(run_module, unreachable_url):
    result = run_module("amqp_publish", {"url": unreachable_url, "queue": "events", "job": JOB})
    assert result["failed"] is True and not result.get("changed")
    assert result["error"] == "BrokerUnreachable"
    assert result["msg"].startswith("cannot reach the broker at " + unreachable_url)
