# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The queue topology: one compact declarative description, its expansion, and declaring it.

The description (every key optional; these are the defaults, ``DEFAULT_TOPOLOGY``)::

    exchange: testfleet                 # durable direct exchange jobs and events are published
                                        # to; the routing key of a message is its queue's name
    dead_letter_exchange: testfleet.dead-letter   # durable fanout exchange
    dead_letter_queue: dead-letter      # quorum queue bound to the dead-letter exchange
    delivery_limit: 5                   # x-delivery-limit of every work queue: a message
                                        # delivered this many times more (a poison message)
                                        # goes to the dead-letter queue
    queues: [events, tests.public, tests.internal, images, releases]
                                        # work queues; each a name, or a mapping
                                        # {name: ..., delivery_limit: ...,
                                        #  single_active_consumer: ...}

``single_active_consumer`` (``x-single-active-consumer``) makes the broker deliver a queue's
messages to one consumer at a time, however many are subscribed; the others take over when it
goes away. It defaults to true for the queue named ``events`` (``SCAN_QUEUE``: webhook deliveries
and scan jobs, whose scans must never run concurrently: two concurrent scans could both queue
the same test context) and to false for every other queue.

Unknown keys are refused. Names are 1-255 characters of letters, digits, ``.``, ``_``, ``:``
and ``-`` and must not start with ``amq.`` (RabbitMQ reserves it).

:func:`expand` turns a description into explicit ``exchanges``, ``queues`` (every one a durable
quorum queue; work queues carry ``x-dead-letter-exchange``, ``x-delivery-limit`` and the
at-least-once dead-letter strategy, plus ``x-single-active-consumer`` when set; the
dead-letter queue none of them) and ``bindings``. :func:`ensure_queue` makes one queue usable (its
exchanges, the dead-letter queue, the queue and its binding); :func:`apply_topology` declares a
whole expanded topology and reports what it created. Neither ever deletes anything: RabbitMQ
cannot change the arguments of an existing queue, so a conflict raises :class:`TopologyMismatch`
explaining how to migrate.
"""

from __future__ import annotations

import re

from ansible_collections.testfleet.infra.plugins.module_utils.amqp import AmqpError, pika

DEFAULT_TOPOLOGY = {
    "exchange": "testfleet",
    "dead_letter_exchange": "testfleet.dead-letter",
    "dead_letter_queue": "dead-letter",
    "delivery_limit": 5,
    "queues": ["events", "tests.public", "tests.internal", "images", "releases"],
}

NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")
NAME_RULE = "a name of 1-255 letters, digits, '.', '_', ':' or '-', not starting with 'amq.'"
QUEUE_KEYS = ("name", "delivery_limit", "single_active_consumer")
# The queue whose consumers must take turns (x-single-active-consumer) unless it says otherwise.
SCAN_QUEUE = "events"
SINGLE_ACTIVE_CONSUMER = "x-single-active-consumer"

_INEQUIVALENT_RE = re.compile(
    r"inequivalent arg '(?P<argument>[^']*)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' "
    r"in vhost '(?P<vhost>[^']*)': received (?P<wanted>.+) but current is (?P<current>.+)$")
_VALUE_RE = re.compile(r"^(?:the value )?'(?P<value>.*?)'(?: of type '[^']*')?$")


class TopologyError(ValueError):
    """An invalid description. ``key`` names the offending key, e.g. ``queues[2].name``."""

    def __init__(self, key, problem):
        self.key = key
        self.problem = problem
        super().__init__("invalid topology: %r %s" % (key, problem))


class TopologyMismatch(AmqpError):
    """Queues or exchanges exist on the broker with other arguments than the topology's.

    ``mismatches`` lists dicts with ``kind`` (queue or exchange), ``name``, ``vhost``,
    ``argument``, ``broker`` (the value on the broker, None when unset) and ``wanted``.
    """

    def __init__(self, mismatches):
        self.mismatches = mismatches
        super().__init__(" ".join(_mismatch_text(m) for m in mismatches))


def _check_name(key, value):
    if not isinstance(value, str) or not NAME_RE.match(value) or value.startswith("amq."):
        raise TopologyError(key, "must be %s, got %r" % (NAME_RULE, value))
    return value


def _check_limit(key, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TopologyError(key, "must be a positive integer, got %r" % (value,))
    return value


def _queue_entry(index, entry, default_limit):
    """Return (name, delivery_limit, single_active_consumer) for one item of ``queues``."""
    key = "queues[%d]" % index
    if isinstance(entry, str):
        name = _check_name(key, entry)
        return name, default_limit, name == SCAN_QUEUE
    if not isinstance(entry, dict):
        raise TopologyError(key, "must be a queue name or a mapping with the keys %s, got %r"
                            % (", ".join(QUEUE_KEYS), entry))
    unknown = sorted((k for k in entry if k not in QUEUE_KEYS), key=str)
    if unknown:
        raise TopologyError("%s.%s" % (key, unknown[0]),
                            "is not a queue key (known keys: %s)" % ", ".join(QUEUE_KEYS))
    if "name" not in entry:
        raise TopologyError(key + ".name", "is required")
    name = _check_name(key + ".name", entry["name"])
    limit = _check_limit(key + ".delivery_limit", entry.get("delivery_limit", default_limit))
    single = entry.get("single_active_consumer", name == SCAN_QUEUE)
    if not isinstance(single, bool):
        raise TopologyError(key + ".single_active_consumer", "must be true or false, got %r" % (single,))
    return name, limit, single


def expand(description=None):
    """Validate a description (None or {} = the defaults) and return the explicit topology.

    The result has ``exchanges`` ({name, type, durable}), ``queues`` ({name, durable,
    arguments}) and ``bindings`` ({exchange, queue, routing_key}); the dead-letter exchange,
    queue and binding come first. Raise TopologyError naming the bad key.
    """
    description = {} if description is None else description
    if not isinstance(description, dict):
        raise TopologyError("(topology)", "must be a mapping, got %r" % (description,))
    unknown = sorted((k for k in description if k not in DEFAULT_TOPOLOGY), key=str)
    if unknown:
        raise TopologyError(str(unknown[0]), "is not a topology key (known keys: %s)"
                            % ", ".join(DEFAULT_TOPOLOGY))
    merged = dict(DEFAULT_TOPOLOGY, **description)
    exchange = _check_name("exchange", merged["exchange"])
    dlx = _check_name("dead_letter_exchange", merged["dead_letter_exchange"])
    dlq = _check_name("dead_letter_queue", merged["dead_letter_queue"])
    default_limit = _check_limit("delivery_limit", merged["delivery_limit"])
    if dlx == exchange:
        raise TopologyError("dead_letter_exchange", "must differ from 'exchange' (%r)" % exchange)
    if not isinstance(merged["queues"], list) or not merged["queues"]:
        raise TopologyError("queues", "must be a non-empty list, got %r" % (merged["queues"],))

    queues = [{"name": dlq, "durable": True, "arguments": {"x-queue-type": "quorum"}}]
    bindings = [{"exchange": dlx, "queue": dlq, "routing_key": ""}]
    for index, entry in enumerate(merged["queues"]):
        name, limit, single = _queue_entry(index, entry, default_limit)
        if name in (q["name"] for q in queues):
            raise TopologyError("queues[%d]" % index, "repeats the queue name %r (already the "
                                "dead-letter queue or an earlier entry)" % name)
        arguments = {
            "x-queue-type": "quorum", "x-dead-letter-exchange": dlx, "x-delivery-limit": limit,
            # Dead-letter at least once: a message leaves the work queue only after the
            # dead-letter queue confirmed it (needs the reject-publish overflow behaviour).
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        if single:
            arguments[SINGLE_ACTIVE_CONSUMER] = True
        queues.append({"name": name, "durable": True, "arguments": arguments})
        bindings.append({"exchange": exchange, "queue": name, "routing_key": name})
    return {
        "exchanges": [{"name": dlx, "type": "fanout", "durable": True},
                      {"name": exchange, "type": "direct", "durable": True}],
        "queues": queues,
        "bindings": bindings,
    }


def binding_label(binding):
    """A binding as one line: ``exchange[routing_key] -> queue``."""
    return "%s[%s] -> %s" % (binding["exchange"], binding["routing_key"], binding["queue"])


def _shown(text):
    """A value quoted in RabbitMQ's inequivalent-arg reply, or None for ``none``."""
    if text == "none":
        return None
    match = _VALUE_RE.match(text)
    return match.group("value") if match else text


def _mismatch_text(mismatch):
    what = "%s %r" % (mismatch["kind"], mismatch["name"])
    differs = "%s is %s on the broker, the topology wants %s" % (
        mismatch["argument"],
        "not set" if mismatch["broker"] is None else repr(mismatch["broker"]),
        "it unset" if mismatch["wanted"] is None else repr(mismatch["wanted"]))
    if mismatch["kind"] == "queue":
        fix = ("RabbitMQ cannot change the arguments of an existing queue and testfleet never "
               "deletes one. To migrate: either use a new queue name in the topology, or stop "
               "the publishers to %(name)r, let its consumers drain it (or move its messages "
               "to another queue with a shovel), delete it (rabbitmqctl delete_queue "
               "-p %(vhost)s %(name)s), apply the topology again and move the saved messages back."
               % mismatch)
        if mismatch["name"] == SCAN_QUEUE:
            fix += (" Its messages (webhook deliveries and scan jobs) need not be kept: once the "
                    "queue exists again, `testfleet scan` re-derives all missing work from GitHub.")
    else:
        fix = ("RabbitMQ cannot change an existing exchange and testfleet never deletes one. To "
               "migrate: delete exchange %(name)r (it holds no messages; e.g. "
               "community.rabbitmq.rabbitmq_exchange with state absent) and apply the topology "
               "again; publishing to it fails in between." % mismatch)
    return "%s already exists with different settings: %s. %s" % (what, differs, fix)


def broker_error(kind, name, exc):
    """Turn the pika exception of declaring ``kind`` ``name`` into an AmqpError."""
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        match = _INEQUIVALENT_RE.search(exc.reply_text or "")
        if exc.reply_code == 406 and match:
            return TopologyMismatch([{
                "kind": match.group("kind"), "name": match.group("name"),
                "vhost": match.group("vhost"), "argument": match.group("argument"), "broker": _shown(match.group("current")),
                "wanted": _shown(match.group("wanted"))}])
        hint = " (the user needs the configure permission on it)" if exc.reply_code == 403 else ""
        return AmqpError("the broker refused to declare %s %r: %s %s%s"
                         % (kind, name, exc.reply_code, exc.reply_text, hint))
    return AmqpError("declaring %s %r failed: %s" % (kind, name, exc.__class__.__name__))


def declare_exchange(channel, exchange, passive=False):
    try:
        channel.exchange_declare(exchange["name"], exchange_type=exchange["type"],
                                 durable=exchange["durable"], passive=passive)
    except pika.exceptions.AMQPError as exc:
        raise broker_error("exchange", exchange["name"], exc) from exc


def declare_queue(channel, queue, passive=False):
    """Declare ``queue`` (an expanded queue); return the broker's Queue.DeclareOk method."""
    try:
        return channel.queue_declare(queue["name"], durable=queue["durable"],
                                     arguments=queue["arguments"], passive=passive).method
    except pika.exceptions.AMQPError as exc:
        raise broker_error("queue", queue["name"], exc) from exc


def bind(channel, binding):
    try:
        channel.queue_bind(binding["queue"], binding["exchange"], binding["routing_key"])
    except pika.exceptions.AMQPError as exc:
        raise broker_error("binding", binding_label(binding), exc) from exc


def ensure_queue(channel, description, name):
    """Make sure queue ``name`` of the topology exists with its arguments and binding.

    Declares (idempotently) the queue's exchange and the dead-letter exchange, the dead-letter
    queue and its binding (without it poison messages would be dropped), the queue and its
    binding. Returns the expanded queue. Raises TopologyError when ``name`` is not in the
    description, TopologyMismatch (after which the broker has closed ``channel``) when the queue
    exists with other arguments, AmqpError on other broker refusals.
    """
    topology = expand(description)
    names = [q["name"] for q in topology["queues"]]
    if name not in names:
        raise TopologyError("queues", "has no queue %r (queues: %s)" % (name, ", ".join(names)))
    dead_letter_queue = names[0]
    exchanges = dict((e["name"], e) for e in topology["exchanges"])
    queues = dict((q["name"], q) for q in topology["queues"])
    for binding in topology["bindings"]:
        if binding["queue"] in (dead_letter_queue, name):
            declare_exchange(channel, exchanges[binding["exchange"]])
            declare_queue(channel, queues[binding["queue"]])
            bind(channel, binding)
    return queues[name]


def _exists(connection, declare, spec):
    """Whether ``spec`` exists, by a passive declare on a fresh channel (a 404 closes it)."""
    channel = connection.channel()
    try:
        declare(channel, spec, passive=True)
    except AmqpError as exc:
        if isinstance(exc.__cause__, pika.exceptions.ChannelClosedByBroker) \
                and exc.__cause__.reply_code == 404:
            return False
        raise
    channel.close()
    return True


def _verify(connection, declare, spec):
    """Re-declare an existing ``spec``; return its mismatches (a declare changes nothing)."""
    channel = connection.channel()
    try:
        declare(channel, spec)
    except TopologyMismatch as exc:
        return exc.mismatches
    channel.close()
    return []


def apply_topology(connection, topology, check_mode=False):
    """Declare what is missing of an expanded ``topology``; never delete or change anything.

    Existing exchanges and queues are re-declared with the wanted settings first: if any
    differs, TopologyMismatch lists them all and nothing is created. Bindings cannot be listed
    over AMQP 0-9-1: all are declared (idempotent) and one counts as created when its queue or
    exchange was created in this run. With ``check_mode`` nothing is created or bound.

    Returns ``{"existing": {exchanges, queues, bindings}, "created": {...}}``: names of
    exchanges and queues, binding dicts (existing bindings: those between existing objects).
    """
    existing = {"exchanges": [], "queues": [], "bindings": []}
    created = {"exchanges": [], "queues": [], "bindings": []}
    plan = [("exchanges", declare_exchange, e) for e in topology["exchanges"]]
    plan += [("queues", declare_queue, q) for q in topology["queues"]]
    mismatches = []
    for group, declare, spec in plan:
        if _exists(connection, declare, spec):
            existing[group].append(spec["name"])
            mismatches.extend(_verify(connection, declare, spec))
        else:
            created[group].append(spec["name"])
    if mismatches:
        raise TopologyMismatch(mismatches)
    for binding in topology["bindings"]:
        if binding["exchange"] in created["exchanges"] or binding["queue"] in created["queues"]:
            created["bindings"].append(binding)
        else:
            existing["bindings"].append(binding)
    if not check_mode:
        channel = connection.channel()
        for group, declare, spec in plan:
            if spec["name"] in created[group]:
                declare(channel, spec)
        for binding in topology["bindings"]:
            bind(channel, binding)
        channel.close()
    return {"existing": existing, "created": created}
