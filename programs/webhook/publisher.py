# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pipelined confirmed publishing on one long-lived broker connection, for asyncio programs.

The broker confirms persistent messages at about 950/s one at a time but about 3,700/s with
32 in flight, so waiting for each confirm before sending the next (what
:class:`~.amqp.ConfirmedPublisher` does) would cap the webhook. :class:`AsyncPublisher` keeps
one pika ``AsyncioConnection`` with one confirm-mode channel: every ``publish`` sends at once
and awaits its own future, resolved when the broker's ``basic.ack`` (possibly ``multiple``)
covers its delivery tag. A nack, a returned (unroutable) message, a closed channel or
connection, a blocked connection (resource alarm) or no confirm within ``timeout`` raise
:class:`Unavailable`: the message is then not known to be stored.

A background task keeps the connection: it reconnects with a growing delay (0.2 s to 2 s) and,
before each connection, makes sure the queue exists with the topology's arguments
(:func:`~.topology.ensure_queue`, over a short blocking connection in a worker thread).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import topology as topology_lib

pika = amqp.pika
try:
    from pika.adapters.asyncio_connection import AsyncioConnection
except ImportError:  # pragma: no cover - depends on the environment
    AsyncioConnection = None

# Header carrying the delivery tag, so a returned (unroutable) message finds its waiter.
SEQUENCE_HEADER = "x-testfleet-publish-seq"
MIN_DELAY = 0.2
MAX_DELAY = 2.0


class Unavailable(Exception):
    """The broker did not confirm the message; ``reason`` is a short machine-friendly word."""

    def __init__(self, reason, detail):
        self.reason = reason
        super().__init__(detail)


class AsyncPublisher:
    """Publish persistent messages with confirms, many in flight, on one reconnecting connection.

    ``settings``: :class:`~.amqp.AmqpSettings`; ``description``: the topology description;
    ``queue``: the topology queue to publish to (through the exchange and routing key of its
    binding in the topology).
    """

    def __init__(self, settings, description, queue, timeout=10.0, app_id="testfleet",
                 logger=None):
        self.settings = settings
        self.description = description
        self.queue = queue
        bindings = [b for b in topology_lib.expand(description)["bindings"] if b["queue"] == queue]
        if not bindings:
            raise topology_lib.TopologyError("queues", "has no queue %r" % queue)
        self.exchange = bindings[0]["exchange"]
        self.routing_key = bindings[0]["routing_key"]
        self.timeout = timeout
        self.app_id = app_id
        self.log = logger or logging.getLogger("testfleet.publisher")
        self.parameters = settings.parameters()
        self.blocked = False
        self.connections = 0
        self.last_error = "not connected yet"
        self._connection = None
        self._channel = None
        self._pending = {}
        self._tag = 0
        self._task = None
        self._expiry = None
        self._closing = False
        self._attempted = None
        self._lost = None

    # state --------------------------------------------------------------------------------

    @property
    def ready(self):
        channel = self._channel
        return channel is not None and channel.is_open

    @property
    def in_flight(self):
        return len(self._pending)

    async def start(self, wait=0.0):
        """Start the connection task; wait up to ``wait`` seconds for the outcome of the first
        connection attempt. Return whether the publisher is ready."""
        loop = asyncio.get_running_loop()
        self._attempted = asyncio.Event()
        self._task = loop.create_task(self._keep_connected())
        self._expiry = loop.create_task(self._expire_forever())
        if wait:
            try:
                await asyncio.wait_for(self._attempted.wait(), wait)
            except asyncio.TimeoutError:
                pass
        return self.ready

    async def close(self):
        self._closing = True
        if _close(self._connection):
            try:
                await asyncio.wait_for(self._lost.wait(), 5)
            except asyncio.TimeoutError:
                pass
        for task in (self._task, self._expiry):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    # publishing ---------------------------------------------------------------------------

    async def publish(self, body, message_id=None, message_type=None):
        """Publish ``body`` (bytes) and return once the broker confirmed it.

        Raise :class:`Unavailable` when it is not known to be stored.
        """
        channel = self._channel
        if channel is None or not channel.is_open:
            raise Unavailable("broker_down", "no broker connection: %s" % self.last_error)
        if self.blocked:
            raise Unavailable("broker_blocked", "the broker blocks publishers (resource alarm)")
        self._tag += 1
        tag = self._tag
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._pending[tag] = (waiter, loop.time() + self.timeout)
        properties = pika.BasicProperties(
            delivery_mode=2, content_type="application/json", message_id=message_id,
            type=message_type, timestamp=int(time.time()), app_id=self.app_id,
            headers={SEQUENCE_HEADER: tag})
        try:
            channel.basic_publish(self.exchange, self.routing_key, body, properties, mandatory=True)
        except Exception as exc:  # the channel or connection closed under us
            self._pending.pop(tag, None)
            raise Unavailable("broker_down", "publishing failed: %s" % (exc or type(exc).__name__))
        await waiter  # resolved by _on_confirm, _on_return, _fail_pending or _expire

    def _expire(self, now):
        """Fail the publishes waiting since before ``now`` - timeout (oldest first)."""
        pending = self._pending
        while pending:
            tag = next(iter(pending))
            waiter, deadline = pending[tag]
            if deadline > now:
                return
            del pending[tag]
            if not waiter.done():
                waiter.set_exception(Unavailable(
                    "timeout", "the broker did not confirm within %g s" % self.timeout))

    async def _expire_forever(self):
        # One timer for all publishes instead of one each (asyncio.wait_for): the timeout is
        # the same for all, so the oldest publish is always first in the dict.
        loop = asyncio.get_running_loop()
        interval = min(0.25, self.timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self._expire(loop.time())

    def _on_confirm(self, frame):
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        pending = self._pending
        if method.multiple:
            done = []
            for tag in pending:
                if tag > method.delivery_tag:
                    break
                done.append(tag)
            waiters = [pending.pop(tag)[0] for tag in done]
        else:
            entry = pending.pop(method.delivery_tag, None)
            waiters = [entry[0]] if entry is not None else []
        for waiter in waiters:
            if waiter.done():
                continue
            if nack:
                waiter.set_exception(Unavailable("nack", "the broker refused the message (nack)"))
            else:
                waiter.set_result(None)

    def _on_return(self, channel, method, properties, body):
        tag = (properties.headers or {}).get(SEQUENCE_HEADER)
        waiter = self._pending.pop(tag, (None, None))[0]
        if waiter is not None and not waiter.done():
            waiter.set_exception(Unavailable(
                "unroutable", "the broker returned the message: no queue is bound to exchange "
                "%r with routing key %r (%s)" % (self.exchange, self.routing_key, method.reply_text)))

    def _fail_pending(self, reason, detail):
        pending, self._pending = self._pending, {}
        for waiter, dummy in pending.values():
            if not waiter.done():
                waiter.set_exception(Unavailable(reason, detail))

    # connection ---------------------------------------------------------------------------

    def _ensure_queue(self):
        """Blocking: declare the queue (and what it needs) with the topology's arguments."""
        connection = amqp.connect(self.settings)
        try:
            try:
                topology_lib.ensure_queue(connection.channel(), self.description, self.queue)
            except topology_lib.TopologyMismatch as exc:
                # The queue exists and messages still land in it: serve, and say what to fix.
                self.log.error("the queue does not match the topology", extra={"fields": {
                    "queue": self.queue, "error": str(exc)}})
        finally:
            if connection.is_open:
                connection.close()

    async def _keep_connected(self):
        loop = asyncio.get_running_loop()
        delay = MIN_DELAY
        while not self._closing:
            try:
                await loop.run_in_executor(None, self._ensure_queue)
                await self._connect()
            except Exception as exc:  # whatever it is, keep trying: the program must not stall
                if isinstance(exc, amqp.AmqpError):
                    detail = str(exc)
                elif isinstance(exc, (pika.exceptions.AMQPError, OSError)):
                    detail = str(amqp.describe_connection_error(self.settings, exc))
                elif isinstance(exc, asyncio.TimeoutError):
                    detail = "no answer from the broker at %s within %g s" % (
                        self.settings.display_url, self.settings.connect_timeout * 2)
                else:
                    detail = "%s: %s" % (type(exc).__name__, exc)
                if detail != self.last_error:
                    self.log.warning("broker unavailable", extra={"fields": {
                        "error": detail, "retry_in_s": delay}})
                self.last_error = detail
                self._attempted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            delay = MIN_DELAY
            self.log.info("broker connected", extra={"fields": {
                "broker": self.settings.display_url, "exchange": self.exchange,
                "queue": self.queue, "connection": self.connections}})
            self._attempted.set()
            await self._lost.wait()
            if not self._closing:
                self.log.warning("broker connection lost", extra={"fields": {
                    "error": self.last_error}})
                await asyncio.sleep(MIN_DELAY)

    async def _connect(self):
        """Open the connection and a confirm-mode channel; raise if any step fails."""
        loop = asyncio.get_running_loop()
        opened = loop.create_future()
        lost = self._lost = asyncio.Event()

        def fail(exc):
            if not opened.done():
                opened.set_exception(exc)

        def on_open(connection):
            connection.channel(on_open_callback=on_channel)

        def on_channel(channel):
            channel.add_on_close_callback(on_channel_closed)
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(self._on_confirm, callback=lambda frame: on_confirming(channel))

        def on_confirming(channel):
            self._tag = 0
            self._channel = channel
            if not opened.done():
                opened.set_result(None)

        def on_channel_closed(channel, reason):
            if self._channel is channel:
                self._channel = None
            self.last_error = "channel closed: %s" % (reason,)
            self._fail_pending("channel_closed", "the channel closed before the broker "
                                                 "confirmed: %s" % (reason,))
            fail(pika.exceptions.AMQPChannelError(reason))
            # A channel the broker closed (e.g. a deleted exchange): reconnect, which declares
            # the topology again.
            if not self._closing:
                _close(self._connection)

        def on_open_error(connection, exc):
            fail(exc)
            lost.set()

        def on_closed(connection, reason):
            if self._connection is not connection:
                return
            self._channel = None
            self.blocked = False
            if not self._closing:
                self.last_error = "connection closed: %s" % (reason,)
            self._fail_pending("connection_lost", "the broker connection was lost before the "
                                                  "broker confirmed: %s" % (reason,))
            fail(reason if isinstance(reason, BaseException) else OSError(str(reason)))
            lost.set()

        def on_blocked(connection, frame):
            self.blocked = True
            self.log.warning("the broker blocks publishers", extra={"fields": {
                "reason": getattr(frame.method, "reason", "")}})

        def on_unblocked(connection, frame):
            self.blocked = False
            self.log.info("the broker unblocked publishers")

        connection = AsyncioConnection(self.parameters, on_open_callback=on_open,
                                       on_open_error_callback=on_open_error,
                                       on_close_callback=on_closed, custom_ioloop=loop)
        self._connection = connection
        connection.add_on_connection_blocked_callback(on_blocked)
        connection.add_on_connection_unblocked_callback(on_unblocked)
        try:
            await asyncio.wait_for(opened, self.settings.connect_timeout * 2)
        except BaseException:
            _close(connection)
            raise
        self.connections += 1


def _close(connection):
    """Close a pika connection unless it is closed or closing; return whether it closes now."""
    if connection is None or connection.is_closed or connection.is_closing:
        return False
    connection.close()
    return True
