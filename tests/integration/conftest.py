"""Integration fixtures: a connection to the real broker and throw-away, uniquely named objects.

Every name starts with ``RUN_PREFIX`` (unique per test run) plus a per-test part; what a test
registers in ``cleanup`` is deleted afterwards, messages included.
"""

import importlib.util
import pathlib
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.topology import expand

RUN_PREFIX = "tftest-%s-" % uuid.uuid4().hex[:8]


@pytest.fixture
def broker(amqp_settings):
    """An open connection to the test broker; the test errors out when it cannot be reached."""
    connection = amqp.connect(amqp_settings)
    yield connection
    if connection.is_open:
        connection.close()


@pytest.fixture(scope="session")
def vhost(amqp_settings):
    """The test broker's virtual host."""
    return amqp_settings.parameters().virtual_host


@pytest.fixture(scope="session")
def restart_broker(amqp_settings):
    """``restart()`` of broker.py next to this file: restarts the local broker and waits until it
    accepts AMQP and can declare a quorum queue again."""
    spec = importlib.util.spec_from_file_location(
        "testfleet_test_broker", pathlib.Path(__file__).with_name("broker.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda timeout=180: module.restart(timeout, settings=amqp_settings)


@pytest.fixture
def prefix():
    """A name prefix unique to this test."""
    return RUN_PREFIX + uuid.uuid4().hex[:6] + "."


@pytest.fixture
def cleanup(amqp_settings):
    """Register names in ``["queues"]`` / ``["exchanges"]``; they are deleted after the test."""
    names = {"queues": set(), "exchanges": set()}
    yield names
    connection = amqp.connect(amqp_settings, attempts=10, retry_delay=1.0)
    channel = connection.channel()
    for queue in sorted(names["queues"]):
        channel.queue_delete(queue)
    for exchange in sorted(names["exchanges"]):
        channel.exchange_delete(exchange)
    connection.close()


@pytest.fixture
def topology(prefix, cleanup):
    """A small description with unique names: two work queues (delivery limits 2 and 4)."""
    description = {
        "exchange": prefix + "jobs",
        "dead_letter_exchange": prefix + "dlx",
        "dead_letter_queue": prefix + "dead-letter",
        "delivery_limit": 2,
        "queues": [prefix + "work", {"name": prefix + "other", "delivery_limit": 4}],
    }
    expanded = expand(description)
    cleanup["queues"].update(q["name"] for q in expanded["queues"])
    cleanup["exchanges"].update(e["name"] for e in expanded["exchanges"])
    return description


@pytest.fixture
def wrong_password_url(amqp_options):
    """The test broker's URL with the user guest and a password it does not accept."""
    parts = urlsplit(amqp_options["url"])
    netloc = "guest:Wr0ng-Pa55word@%s" % parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Inspector:
    """Looks at the broker through its own connection."""

    def __init__(self, connection):
        self.connection = connection

    def exists(self, kind, name):
        """Whether exchange or queue ``name`` exists (passive declare on its own channel)."""
        channel = self.connection.channel()
        try:
            if kind == "queue":
                channel.queue_declare(name, passive=True)
            else:
                channel.exchange_declare(name, passive=True)
        except amqp.pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404, exc
            return False
        channel.close()
        return True

    def message_count(self, queue, expected=None, timeout=10.0):
        """Messages ready in ``queue``; with ``expected``, wait up to ``timeout`` s for that count."""
        deadline = time.monotonic() + timeout
        while True:
            channel = self.connection.channel()
            count = channel.queue_declare(queue, passive=True).method.message_count
            channel.close()
            if expected is None or count == expected or time.monotonic() > deadline:
                return count
            self.connection.sleep(0.1)


@pytest.fixture
def inspect(broker):
    return Inspector(broker)
