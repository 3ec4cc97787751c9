import socket

import pytest


@pytest.fixture
def unreachable_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return "amqp://127.0.0.1:%d/" % sock.getsockname()[1]


def test_an_invalid_topology_fails_before_connecting(run_module, unreachable_url):
    result = run_module("amqp_topology", {"url": unreachable_url, "topology": {
        "queues": ["events", {"name": "images", "delivery_limit": 0}]}})
    assert result["failed"] is True
    assert result["key"] == "queues[1].delivery_limit"
    assert result["msg"] == ("invalid topology: 'queues[1].delivery_limit' must be a positive "
                             "integer, got 0")


def test_an_unknown_topology_key_is_refused(run_module, unreachable_url):
    result = run_module("amqp_topology", {"url": unreachable_url, "topology": {"queue": ["x"]}})
    assert result["failed"] is True
    assert "topology.queue" in result["msg"] and "Unsupported parameters" in result["msg"]


def test_an_unreachable_broker_fails_clearly(run_module, unreachable_url):
    result = run_module("amqp_topology", {"url": unreachable_url}, check_mode=True)
    assert result["failed"] is True
    assert result["error"] == "BrokerUnreachable"
    assert unreachable_url in result["msg"]
