#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: amqp_get
short_description: Take one message from a RabbitMQ queue
version_added: 0.1.0
author:
  - testfleet developers (@testfleet)
description:
  - Takes the message at the head of a queue, acknowledges it (it is gone from the queue) and
    returns it, for smoke checks after a deployment and for operators reading, for example,
    the dead-letter queue.
  - The message taken is whichever is at the head of the queue; a check that must not consume
    real work should use a queue of its own.
  - An empty queue is not an error; RV(empty) says so.
  - The message is taken by a short-lived consumer (prefetch 1), so queues with a single active
    consumer (testfleet's C(events)) can be read too; while another consumer is the active one
    of such a queue, nothing comes and the result is RV(empty).
extends_documentation_fragment:
  - testfleet.infra.amqp
  - testfleet.infra.amqp.action_group
  - ansible.builtin.action_common_attributes
options:
  queue:
    description:
      - The queue to take the message from. It must exist.
    type: str
    required: true
  wait:
    description:
      - Seconds to wait for a message when the queue is empty. V(0) takes a message only if
        one is there already.
    type: float
    default: 0
  message_id:
    description:
      - The AMQP message_id the message must have (for testfleet jobs, the job's C(id)).
      - When the message at the head of the queue has another id, it is put back (rejected
        with requeue, which counts as a delivery towards the queue's delivery limit), nothing is
        taken and the module fails naming the id it found.
    type: str
  discard_pattern:
    description:
      - With O(message_id), a regular expression (Python, matched at the start) of message ids
        that may be dropped on the way. A message at the head of the queue whose id matches it
        and is not O(message_id) is acknowledged (removed) and the next one is looked at, up to
        100 of them. For leftovers of earlier checks, for example C(^sample-) for the deploy's
        sample deliveries; never give a pattern that real work could match.
      - They are returned in RV(discarded).
    type: str
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: >-
      Takes nothing; returns the queue's current RV(message_count) and reports a change when
      the queue holds a message (O(wait) is not applied).
  diff_mode:
    support: none
seealso:
  - module: testfleet.infra.amqp_publish
"""

EXAMPLES = r"""
- name: Publish a check job to a queue of its own
  testfleet.infra.amqp_publish:
    queue: smoke-check
    exchange: testfleet
    job: {version: 1, id: "smoke-{{ 999999 | random }}", kind: smoke}
  register: published

- name: Read it back
  testfleet.infra.amqp_get:
    queue: smoke-check
    message_id: "{{ published.message_id }}"
    wait: 10
  register: taken
  failed_when: taken.empty

- name: Read back the sample delivery, dropping samples of earlier checks that were left there
  testfleet.infra.amqp_get:
    queue: events
    message_id: "{{ sample_id }}"
    discard_pattern: "^sample-"
    wait: 10

- name: Look at the oldest dead-lettered message (it is removed from the queue)
  testfleet.infra.amqp_get:
    queue: dead-letter
  register: dead
"""

RETURN = r"""
discarded:
  description: Ids of the messages dropped because they matched O(discard_pattern).
  returned: always
  type: list
  elements: str
  sample: [sample-1795669479469217681]
empty:
  description: Whether no message was taken because the queue was empty (after O(wait)).
  returned: always
  type: bool
  sample: false
message_count:
  description: Messages left in the queue (in check mode, the messages in the queue).
  returned: always
  type: int
  sample: 0
message_id:
  description: The AMQP message_id of the message taken.
  returned: when a message was taken
  type: str
  sample: test-1234-debian-12
body:
  description: The body, parsed as JSON when it is valid JSON, else as UTF-8 text.
  returned: when a message was taken
  type: raw
  sample: {version: 1, id: test-1234-debian-12, kind: test}
body_is_json:
  description: Whether RV(body) was parsed from JSON.
  returned: when a message was taken
  type: bool
  sample: true
content_type:
  description: The AMQP content_type property of the message.
  returned: when a message was taken
  type: str
  sample: application/json
headers:
  description:
    - The AMQP headers, with bytes as text and times as ISO 8601 strings.
    - A dead-lettered message carries C(x-death) (why, from which queue) and C(x-first-death-*).
  returned: when a message was taken
  type: dict
  sample: {x-delivery-count: 0}
delivery_count:
  description: Earlier deliveries of the message (the quorum queue's C(x-delivery-count); 0 the first time).
  returned: when a message was taken
  type: int
  sample: 0
redelivered:
  description: Whether the broker delivered the message before.
  returned: when a message was taken
  type: bool
  sample: false
exchange:
  description: The exchange the message was last published or dead-lettered to (empty for the default exchange).
  returned: when a message was taken
  type: str
  sample: testfleet
routing_key:
  description: The routing key the message was published with.
  returned: when a message was taken
  type: str
  sample: tests.public
"""

import json
import re
import time

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.amqp import pika
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule

POLL_INTERVAL = 0.2
MAX_DISCARDED = 100
SETTLE = 5.0      # seconds a ready message may take to reach the consumer


def _body(raw):
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text), True
    except ValueError:
        return text, False


def _take(channel, queue, wait):
    """Take one message with a consumer (prefetch 1), waiting up to ``wait`` seconds.

    Return (method, properties, body, remaining), method None when nothing came. A consumer, not
    basic.get: quorum queues with a single active consumer (``events``) refuse basic.get. The
    message stays unacked (the consumer already cancelled) until the caller acks or rejects it.
    """
    channel.basic_qos(prefetch_count=1)
    deadline = time.monotonic() + wait
    while True:
        ready = channel.queue_declare(queue, passive=True).method.message_count
        remaining = deadline - time.monotonic()
        if ready or remaining > 0:
            # a ready message arrives within milliseconds; SETTLE bounds the wait when another
            # consumer of a single-active-consumer queue is the active one
            timeout = max(remaining, SETTLE) if ready else min(POLL_INTERVAL, remaining)
            for method, properties, body in channel.consume(queue, inactivity_timeout=timeout):
                break
            # stop the consumer before the message is acked or rejected: else the broker hands it
            # the next (or the same) message at once, and cancelling would requeue that one,
            # counting a delivery against it
            channel.cancel()
            if method is not None:
                left = channel.queue_declare(queue, passive=True).method.message_count
                return method, properties, body, left
        if time.monotonic() >= deadline:
            return None, None, None, 0


def _message_result(method, properties, body, remaining):
    headers = amqp.plain(properties.headers or {})
    parsed, is_json = _body(body)
    return dict(
        changed=True, empty=False, message_count=remaining,
        message_id=properties.message_id, body=parsed, body_is_json=is_json,
        content_type=properties.content_type, headers=headers,
        delivery_count=headers.get("x-delivery-count", 0), redelivered=method.redelivered,
        exchange=method.exchange, routing_key=method.routing_key)


def run(module, channel):
    queue, wanted_id = module.params["queue"], module.params["message_id"]
    pattern = module.params["discard_pattern"]
    if pattern is not None:
        if wanted_id is None:
            module.fail_json(msg="discard_pattern needs message_id (what to look for)")
        try:
            pattern = re.compile(pattern)
        except re.error as exc:
            module.fail_json(msg="discard_pattern is not a valid regular expression: %s" % exc)
    if module.check_mode:
        count = channel.queue_declare(queue, passive=True).method.message_count
        module.exit_json(changed=count > 0, empty=count == 0, message_count=count, discarded=[])
    discarded = []
    while True:
        method, properties, body, remaining = _take(channel, queue, module.params["wait"])
        if method is None:
            module.exit_json(changed=bool(discarded), empty=True, message_count=0, discarded=discarded)
        found = properties.message_id
        if wanted_id is None or found == wanted_id:
            break
        if pattern is not None and found and pattern.match(found) and len(discarded) < MAX_DISCARDED:
            channel.basic_ack(method.delivery_tag)
            discarded.append(found)
            continue
        channel.basic_nack(method.delivery_tag, requeue=True)
        module.fail_json(
            changed=bool(discarded), empty=False, message_count=remaining + 1, discarded=discarded,
            found_message_id=found,
            msg="the message at the head of queue %r has message_id %r, not %r: it was put back "
                "(this counts as a delivery towards the queue's delivery limit)"
                % (queue, found, wanted_id))
    channel.basic_ack(method.delivery_tag)
    module.exit_json(discarded=discarded, **_message_result(method, properties, body, remaining))


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            queue=dict(type="str", required=True),
            wait=dict(type="float", default=0),
            message_id=dict(type="str"),
            discard_pattern=dict(type="str"),
        ),
        families=("amqp",),
        supports_check_mode=True,
    )
    with module.reporting():
        connection = module.connect()
    try:
        run(module, connection.channel())
    except pika.exceptions.ChannelClosedByBroker as exc:
        module.fail_json(msg="the broker refused to read queue %r: %s %s"
                         % (module.params["queue"], exc.reply_code, exc.reply_text))
    except pika.exceptions.AMQPConnectionError as exc:
        module.fail_json(msg="the connection to the broker was lost reading queue %r: %s"
                         % (module.params["queue"], exc.__class__.__name__))
    finally:
        if connection.is_open:
            connection.close()


if __name__ == "__main__":
    main()
