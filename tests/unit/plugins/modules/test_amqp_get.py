import datetime

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.modules import amqp_get


def test_headers_become_json_types():
    long_int = type("long", (int,), {"__repr__": lambda self: "%dL" % self})
    headers = {"x-death": [{"count": long_int(1), "time": datetime.datetime(
        2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), "routing-keys": [b"events"],
        "reason": "rejected"}], "flag": True, "none": None, "ratio": 0.5, b"raw": b"\xff"}
    plain = amqp.plain(headers)
    assert plain == {"x-death": [{"count": 1, "time": "2024-01-02T03:04:05+00:00",
                                  "routing-keys": ["events"], "reason": "rejected"}],
                     "flag": True, "none": None, "ratio": 0.5, "raw": "\ufffd"}
    assert repr(plain["x-death"][0]["count"]) == "1"  # a plain int, not pika's long


def test_bodies_are_json_when_they_can_be():
    assert amqp_get._body(b'{"id": "x"}') == ({"id": "x"}, True)
    assert amqp_get._body(b"plain text") == ("plain text", False)
    assert amqp_get._body(b"\xffbad") == ("\ufffdbad", False)
