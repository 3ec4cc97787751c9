# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The broker side of the operator CLI: queues, dead letters, replays, publishing jobs.

:class:`Operator` does every AMQP operation of the commands on one connection, with the
``topology`` of the config: queue counts by a passive declare, the dead-letter queue read
without consuming it (:func:`describe_message`: what a dead letter is and why it died), replays
through the topology's exchange (:func:`replay_headers`), confirmed publishes of jobs.
:func:`peek` lists a quorum queue's messages through ``rabbitmq-queues peek``, which (unlike any
AMQP read) does not count as a delivery. Errors are :class:`~.errors.UsageError` and
:class:`~.errors.CommandFailed`.
"""

from __future__ import annotations

import json
import re
import subprocess

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils import topology as topology_lib
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore
from ansible_collections.testfleet.infra.programs.cli.errors import CommandFailed, UsageError

pika = amqp.pika

REASON_HEADER = "x-testfleet-reason"
QUEUE_HEADER = "x-testfleet-queue"
REPLAYED_HEADER = "x-testfleet-replayed"
# Headers that describe a dead-lettering; a replayed message starts without them.
DEAD_LETTER_HEADERS = ("x-death", "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange",
                       "x-last-death-queue", "x-last-death-reason", "x-last-death-exchange",
                       "x-delivery-count", REASON_HEADER, QUEUE_HEADER, "x-testfleet-worker")
DEATH_REASONS = {
    "delivery_limit": "delivered too often (the queue's delivery limit)",
    "rejected": "rejected without requeue",
    "expired": "expired (message TTL)",
    "maxlen": "dropped from a full queue",
}
PEEK_PROGRAM = "rabbitmq-queues"
PEEK_EMPTY = "does not have a message at that position"


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def describe_message(properties, body):
    """What a (dead-lettered) message is: id, kind, repo, original queue, reason, its job or body."""
    headers = dict((str(_text(k)), v) for k, v in (properties.headers or {}).items())
    try:
        data = jobs.decode_message(body)
    except jobs.JobError:
        data = None
    message = data if isinstance(data, dict) else {}
    payload = message.get("payload") if isinstance(message.get("payload"), dict) else None
    if payload is not None and "delivery" in message and "event" in message:
        kind = "delivery:%s" % _text(message.get("event"))
        repo = (payload.get("repository") or {}).get("full_name") if isinstance(payload.get("repository"), dict) else None
        job_id = message.get("delivery")
    else:
        kind, repo, job_id = message.get("kind"), message.get("repo"), message.get("id")
    deaths = headers.get("x-death") or []
    death = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    death = dict((str(_text(k)), _text(v)) for k, v in death.items())
    queue = _text(headers.get(QUEUE_HEADER)) or death.get("queue") or _text(headers.get("x-first-death-queue"))
    reason = _text(headers.get(REASON_HEADER))
    if not reason and death:
        reason = DEATH_REASONS.get(death.get("reason"), death.get("reason") or "dead-lettered")
        if death.get("count") and death.get("count") > 1:
            reason += " (dead-lettered %d times)" % death["count"]
    elif not reason and headers.get("x-first-death-reason"):
        reason = DEATH_REASONS.get(_text(headers["x-first-death-reason"]), _text(headers["x-first-death-reason"]))
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return {
        "id": _text(properties.message_id) or (job_id if isinstance(job_id, str) else None),
        "kind": kind if isinstance(kind, str) else None,
        "repo": repo if isinstance(repo, str) else None,
        "queue": queue,
        "reason": reason,
        "replayed": int(headers.get(REPLAYED_HEADER) or 0),
        "job": logstore.public_job(data) if data is not None else None,  # args.secrets hidden
        "body": None if data is not None else text[:4096],
    }


def replay_headers(headers):
    """The headers a replayed message is published with."""
    kept = dict((str(_text(k)), v) for k, v in (headers or {}).items() if str(_text(k)) not in DEAD_LETTER_HEADERS)
    kept[REPLAYED_HEADER] = int(kept.get(REPLAYED_HEADER) or 0) + 1
    return kept


class Operator:
    """The commands' broker side, on one connection."""

    def __init__(self, connection, description):
        self.connection = connection
        self.description = description
        self.topology = topology_lib.expand(description)
        self.dead_letter_queue = self.topology["queues"][0]["name"]
        self.queues = dict((q["name"], q) for q in self.topology["queues"])
        self.bindings = dict((b["queue"], b) for b in self.topology["bindings"][1:])
        self._publisher = None

    @property
    def publisher(self):
        if self._publisher is None:
            self._publisher = amqp.ConfirmedPublisher(self.connection)
        return self._publisher

    def queue(self, name):
        if name not in self.queues:
            raise UsageError("%r is not a queue of the topology (queues: %s)" % (name, ", ".join(self.queues)))
        return self.queues[name]

    def stats(self, name):
        """(ready, consumers) of a queue by a passive declare, or None when it does not exist."""
        channel = self.connection.channel()
        try:
            ok = channel.queue_declare(name, passive=True).method
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise CommandFailed("the broker refused to show queue %r: %s %s" % (name, exc.reply_code, exc.reply_text))
        channel.close()
        return ok.message_count, ok.consumer_count

    def differences(self, queue):
        """The arguments in which an existing queue differs from the topology (a declare with the
        topology's arguments changes nothing: the broker compares them), or None if unknown."""
        channel = self.connection.channel()
        try:
            topology_lib.declare_queue(channel, queue)
        except topology_lib.TopologyMismatch as exc:
            return [m["argument"] for m in exc.mismatches]
        except amqp.AmqpError:  # e.g. no configure permission
            return None
        channel.close()
        return []

    def queue_rows(self):
        rows = []
        for queue in self.topology["queues"]:
            stats = self.stats(queue["name"])
            arguments = queue["arguments"]
            rows.append({
                "queue": queue["name"],
                "role": "dead letters" if queue["name"] == self.dead_letter_queue else "work",
                "exists": stats is not None,
                "ready": stats[0] if stats else None,
                "consumers": stats[1] if stats else None,
                "delivery_limit": arguments.get("x-delivery-limit"),
                "single_active_consumer": bool(arguments.get(topology_lib.SINGLE_ACTIVE_CONSUMER)),
                "differs": self.differences(queue) if stats is not None else None,
            })
        return rows

    def _take_dead_letters(self, channel, limit=None):
        """``(method, properties, body)`` of up to ``limit`` dead letters (all: None), each taken
        without ack: the caller acks it or gives it back."""
        taken = 0
        while limit is None or taken < limit:
            method, properties, body = channel.basic_get(self.dead_letter_queue, auto_ack=False)
            if method is None:
                return
            taken += 1
            yield method, properties, body

    @staticmethod
    def _give_back(channel, held):
        """Requeue the dead letters taken and not acked (when ``held``), and close the channel."""
        if held:
            channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
        channel.close()

    def _refused(self, exc):
        return CommandFailed("the broker refused to read queue %r: %s %s"
                             % (self.dead_letter_queue, exc.reply_code, exc.reply_text))

    def read_dead_letters(self, limit=None):
        """Up to ``limit`` dead letters (all: None), described; all are given back (requeued)."""
        channel = self.connection.channel()
        found = []
        try:
            for dummy, properties, body in self._take_dead_letters(channel, limit):
                found.append(describe_message(properties, body))
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise self._refused(exc)
        self._give_back(channel, bool(found))
        return found

    def replay(self, ids=None):
        """Move dead letters (all, or those whose id is in ``ids``) back to their queues."""
        channel = self.connection.channel()
        done = []
        held = False
        try:
            for method, properties, body in self._take_dead_letters(channel):
                info = describe_message(properties, body)
                row = {"id": info["id"], "kind": info["kind"], "queue": info["queue"]}
                if ids is not None and info["id"] not in ids:
                    held = True
                    continue
                binding = self.bindings.get(info["queue"])
                if binding is None:
                    row.update(replayed=False, problem="its original queue %s is not a work queue of the topology"
                               % (repr(info["queue"]) if info["queue"] else "(unknown: no x-testfleet-queue or x-death header)"))
                    held = True
                    done.append(row)
                    continue
                try:
                    self.publisher.publish(binding["exchange"], binding["routing_key"], body,
                                           message_id=properties.message_id, headers=replay_headers(properties.headers),
                                           content_type=properties.content_type or "application/json")
                except amqp.PublishRefused as exc:
                    row.update(replayed=False, problem=str(exc))
                    held = True
                    done.append(row)
                    continue
                channel.basic_ack(method.delivery_tag)
                row.update(replayed=True, problem=None)
                done.append(row)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise self._refused(exc)
        self._give_back(channel, held)
        return done

    def publish_job(self, queue, job):
        binding = self.bindings.get(queue)
        if binding is None:
            raise UsageError("%r is not a work queue of the topology (work queues: %s)"
                             % (queue, ", ".join(self.bindings)))
        try:
            self.publisher.publish(binding["exchange"], binding["routing_key"], jobs.encode_job(job), message_id=job["id"])
        except amqp.PublishRefused as exc:
            raise CommandFailed(str(exc))

    def close(self):
        if self.connection.is_open:
            self.connection.close()


def peek(queue, vhost, limit, run=subprocess.run):
    """Up to ``limit`` messages of a quorum queue through ``rabbitmq-queues peek`` (no delivery)."""
    rows = []
    for position in range(1, limit + 1):
        command = [PEEK_PROGRAM, "peek", "--vhost", vhost, queue, str(position), "--formatter", "json"]
        try:
            done = run(command, capture_output=True, text=True, timeout=120, check=False)
        except FileNotFoundError:
            raise CommandFailed("--peek needs %s (RabbitMQ's CLI tools): run it on a node of the broker's cluster"
                                % PEEK_PROGRAM)
        except subprocess.TimeoutExpired:
            raise CommandFailed("%s peek did not answer within 120 s" % PEEK_PROGRAM)
        output = (done.stdout or "").strip() or (done.stderr or "").strip()
        if done.returncode != 0:
            if PEEK_EMPTY in output:
                break
            raise CommandFailed("%s peek failed (exit %d): %s" % (PEEK_PROGRAM, done.returncode, output[-500:] or "no output"))
        try:
            message = json.loads(output.splitlines()[-1])["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise CommandFailed("%s peek answered something unexpected: %s" % (PEEK_PROGRAM, output[-500:]))
        start = message.get("payload (max 64 bytes)")
        if isinstance(start, str) and '"secrets"' in start:  # the start of args.secrets: never shown
            start = start[:start.index('"secrets"')] + '"secrets": (hidden)'
        kind = re.search(r'"kind": ?"([a-z0-9-]+)"', start or "")
        rows.append({"position": position, "id": message.get("message_id"),
                     "deliveries": message.get("header.x-delivery-count"),
                     "kind": kind.group(1) if kind else None, "body_start": start})
    return rows
