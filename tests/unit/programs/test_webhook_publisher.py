"""The confirm bookkeeping of AsyncPublisher, with a fake channel (no broker)."""

import asyncio

import pika
import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.amqp import AmqpSettings
from ansible_collections.testfleet.infra.programs.webhook.publisher import (
    SEQUENCE_HEADER, AsyncPublisher, Unavailable)


class FakeChannel:
    is_open = True

    def __init__(self):
        self.sent = []

    def basic_publish(self, exchange, routing_key, body, properties, mandatory):
        self.sent.append((exchange, routing_key, body, properties, mandatory))


def frame(method):
    return pika.frame.Method(1, method)


def publisher(timeout=5.0):
    result = AsyncPublisher(AmqpSettings(), {"exchange": "ex", "queues": ["events"]}, "events",
                            timeout=timeout, app_id="test")
    result._channel = FakeChannel()
    return result


async def start(pub, count):
    tasks = [asyncio.ensure_future(pub.publish(b"m%d" % n, message_id="id-%d" % n, message_type="push"))
             for n in range(count)]
    await asyncio.sleep(0)
    return tasks


async def outcome(task):
    try:
        await task
        return "ok"
    except Unavailable as exc:
        return exc.reason


def test_messages_are_persistent_mandatory_and_carry_their_ids():
    async def go():
        pub = publisher()
        tasks = await start(pub, 2)
        sent = pub._channel.sent
        assert [(s[0], s[1], s[2], s[4]) for s in sent] == [("ex", "events", b"m0", True), ("ex", "events", b"m1", True)]
        properties = sent[1][3]
        assert (properties.delivery_mode, properties.message_id, properties.type) == (2, "id-1", "push")
        assert properties.headers[SEQUENCE_HEADER] == 2
        assert pub.in_flight == 2
        pub._on_confirm(frame(pika.spec.Basic.Ack(delivery_tag=2, multiple=True)))
        assert [await outcome(t) for t in tasks] == ["ok", "ok"]
        assert pub.in_flight == 0
    asyncio.run(go())


def test_single_and_multiple_acks_and_nacks():
    async def go():
        pub = publisher()
        tasks = await start(pub, 6)
        pub._on_confirm(frame(pika.spec.Basic.Ack(delivery_tag=2, multiple=False)))
        pub._on_confirm(frame(pika.spec.Basic.Nack(delivery_tag=3, multiple=True)))  # 1 and 3
        pub._on_confirm(frame(pika.spec.Basic.Ack(delivery_tag=5, multiple=True)))  # 4 and 5
        await asyncio.sleep(0)
        assert pub.in_flight == 1
        pub._on_confirm(frame(pika.spec.Basic.Ack(delivery_tag=6, multiple=False)))
        pub._on_confirm(frame(pika.spec.Basic.Ack(delivery_tag=6, multiple=False)))  # repeated: ignored
        return [await outcome(t) for t in tasks]
    assert asyncio.run(go()) == ["nack", "ok", "nack", "ok", "ok", "ok"]


def test_a_returned_message_fails_only_its_own_publish():
    async def go():
        pub = publisher()
        tasks = await start(pub, 3)
        returned = pub._channel.sent[1][3]
        pub._on_return(None, pika.spec.Basic.Return(reply_code=312, reply_text="NO_ROUTE"), returned, b"m1")
        pub._on_confirm(frame(pika.spec.Basic.Ack(delivery_tag=3, multiple=True)))
        return [await outcome(t) for t in tasks]
    assert asyncio.run(go()) == ["ok", "unroutable", "ok"]


def test_a_lost_connection_fails_everything_in_flight():
    async def go():
        pub = publisher()
        tasks = await start(pub, 3)
        pub._fail_pending("connection_lost", "gone")
        return [await outcome(t) for t in tasks] + [pub.in_flight]
    assert asyncio.run(go()) == ["connection_lost"] * 3 + [0]


def test_no_confirm_in_time_and_no_channel():
    async def go():
        pub = publisher(timeout=10)
        [old, new] = await start(pub, 2)
        now = asyncio.get_running_loop().time()
        pub._expire(now)  # nothing is 10 s old yet
        assert pub.in_flight == 2
        pub._expire(now + 10)
        result = [await outcome(old), await outcome(new), pub.in_flight]
        pub._on_confirm(frame(pika.spec.Basic.Ack(delivery_tag=1, multiple=False)))  # too late: ignored
        pub.blocked = True
        with pytest.raises(Unavailable) as blocked:
            await pub.publish(b"x")
        pub._channel = None
        with pytest.raises(Unavailable) as down:
            await pub.publish(b"x")
        return result + [blocked.value.reason, down.value.reason]
    assert asyncio.run(go()) == ["timeout", "timeout", 0, "broker_blocked", "broker_down"]


def test_the_expiry_task_fails_publishes_that_wait_too_long():
    async def go():
        pub = publisher(timeout=0.1)
        expiry = asyncio.ensure_future(pub._expire_forever())
        [task] = await start(pub, 1)
        result = await asyncio.wait_for(outcome(task), 5)
        expiry.cancel()
        return result
    assert asyncio.run(go()) == "timeout"
