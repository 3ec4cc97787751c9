#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: amqp_topology
short_description: Declare testfleet's RabbitMQ exchanges, queues and bindings
version_added: 0.1.0
author:
  - testfleet developers (@testfleet)
description:
  - Applies the queue topology of testfleet, given as one compact description, to a RabbitMQ
    broker over AMQP 0-9-1.
  - Creates the exchanges, queues and bindings that are missing. Every queue is a durable
    quorum queue; work queues dead-letter to the dead-letter exchange after O(topology.delivery_limit)
    deliveries.
  - Never deletes or changes anything. RabbitMQ cannot change the arguments of an existing
    queue, so a queue or exchange that exists with other settings makes the module fail,
    naming the queue and the argument that differs and explaining how to migrate; nothing is
    created in that case.
extends_documentation_fragment:
  - testfleet.infra.amqp
  - testfleet.infra.amqp.action_group
  - ansible.builtin.action_common_attributes
options:
  topology:
    description:
      - The description of the topology. Every key is optional; the default, V({}), is the
        built-in topology described by the defaults of the keys below.
      - Unknown keys are refused. Names are 1-255 letters, digits, C(.), C(_), C(:) or C(-)
        and must not start with C(amq.).
    type: dict
    default: {}
    suboptions:
      exchange:
        description:
          - Durable direct exchange that jobs and events are published to. The routing key of
            a message is the name of its queue.
        type: str
        default: testfleet
      dead_letter_exchange:
        description:
          - Durable fanout exchange the work queues dead-letter to.
        type: str
        default: testfleet.dead-letter
      dead_letter_queue:
        description:
          - Quorum queue bound to O(topology.dead_letter_exchange). It has no delivery limit
            and no dead-letter exchange of its own.
        type: str
        default: dead-letter
      delivery_limit:
        description:
          - C(x-delivery-limit) of every work queue that does not set its own. A message
            returned to its queue more often than this (a poison message) goes to the
            dead-letter queue.
        type: int
        default: 5
      queues:
        description:
          - The work queues, each bound to O(topology.exchange) with its name as routing key.
          - Each item is a queue name, or a mapping with the keys C(name) (required),
            C(delivery_limit) (overrides O(topology.delivery_limit) for that queue) and
            C(single_active_consumer) (a boolean).
          - C(single_active_consumer) sets C(x-single-active-consumer) on the queue, so that the
            broker delivers its messages to one consumer at a time, however many are subscribed,
            and another takes over when that one goes away. It defaults to V(true) for the queue
            named C(events) (webhook deliveries and scan jobs, whose scans must never run
            concurrently) and to V(false) for every other queue.
        type: list
        elements: raw
        default: [events, tests.public, tests.internal, images, releases]
notes:
  - Bindings cannot be listed over AMQP 0-9-1. The module declares every binding (which is
    idempotent) and reports a binding as created only when its queue or exchange was created
    in the same run; a binding that was removed by hand between existing objects is restored
    without being reported.
  - The user needs the C(configure) and C(write) permissions on the objects and C(read) on the
    queues (to bind them).
  - Turning C(single_active_consumer) on or off for an existing queue changes its arguments,
    which RabbitMQ cannot do, so the module fails and explains how to migrate the queue.
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Reports what would be created and checks the existing objects' settings; creates nothing.
  diff_mode:
    support: full
    details: Before and after lists of exchanges, queues and bindings (C(exchange[routing_key] -> queue)).
"""

EXAMPLES = r"""
- name: Apply the built-in topology to the local broker
  testfleet.infra.amqp_topology:

- name: Apply a topology with one more work queue and a higher limit for image builds
  testfleet.infra.amqp_topology:
    url: amqps://testfleet@broker.example.org/testfleet
    password_file: /etc/testfleet/amqp-password
    ca_file: /etc/testfleet/ca.pem
    topology:
      queues:
        - events
        - tests.public
        - tests.internal
        - tests.kvm
        - name: images
          delivery_limit: 10
        - releases

- name: A topology whose scan queue has another name (its consumers take turns)
  testfleet.infra.amqp_topology:
    topology:
      queues:
        - name: ci-events
          single_active_consumer: true
        - tests.public
"""

RETURN = r"""
created:
  description: What this run created (in check mode, what it would create).
  returned: success
  type: dict
  contains:
    exchanges:
      description: Names of the exchanges created.
      type: list
      elements: str
      sample: [testfleet.dead-letter, testfleet]
    queues:
      description: Names of the queues created.
      type: list
      elements: str
      sample: [dead-letter, events]
    bindings:
      description: Bindings whose queue or exchange was created.
      type: list
      elements: dict
      sample: [{exchange: testfleet, queue: events, routing_key: events}]
topology:
  description: The expanded topology, with every argument explicit.
  returned: success
  type: dict
  contains:
    exchanges:
      description: Exchanges with C(name), C(type) and C(durable).
      type: list
      elements: dict
    queues:
      description: Queues with C(name), C(durable) and C(arguments).
      type: list
      elements: dict
      sample:
        - name: events
          durable: true
          arguments: {x-queue-type: quorum, x-dead-letter-exchange: testfleet.dead-letter, x-delivery-limit: 5,
                      x-dead-letter-strategy: at-least-once, x-overflow: reject-publish, x-single-active-consumer: true}
    bindings:
      description: Bindings with C(exchange), C(queue) and C(routing_key).
      type: list
      elements: dict
mismatches:
  description: When the module fails because objects exist with other settings, what differs.
  returned: failure
  type: list
  elements: dict
  sample: [{kind: queue, name: events, vhost: /, argument: x-delivery-limit, broker: "5", wanted: "6"}]
"""

from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.topology import (
    DEFAULT_TOPOLOGY, apply_topology, binding_label, expand)

TOPOLOGY_OPTIONS = dict(
    exchange=dict(type="str", default=DEFAULT_TOPOLOGY["exchange"]),
    dead_letter_exchange=dict(type="str", default=DEFAULT_TOPOLOGY["dead_letter_exchange"]),
    dead_letter_queue=dict(type="str", default=DEFAULT_TOPOLOGY["dead_letter_queue"]),
    delivery_limit=dict(type="int", default=DEFAULT_TOPOLOGY["delivery_limit"]),
    queues=dict(type="list", elements="raw", default=list(DEFAULT_TOPOLOGY["queues"])),
)


def _names(state):
    return {
        "exchanges": list(state["exchanges"]),
        "queues": list(state["queues"]),
        "bindings": [binding_label(b) for b in state["bindings"]],
    }


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(topology=dict(type="dict", default={}, options=TOPOLOGY_OPTIONS)),
        families=("amqp",),
        supports_check_mode=True,
    )
    with module.reporting():
        topology = expand(module.params["topology"])
    with module.reporting(dict(topology=topology)):
        connection = module.connect()
        try:
            result = apply_topology(connection, topology, check_mode=module.check_mode)
        finally:
            if connection.is_open:
                connection.close()

    created = result["created"]
    before = _names(result["existing"])
    after = _names({"exchanges": [e["name"] for e in topology["exchanges"]],
                    "queues": [q["name"] for q in topology["queues"]],
                    "bindings": topology["bindings"]})
    module.exit_json(
        changed=any(created.values()), created=created, topology=topology,
        diff={"before": before, "after": after})


if __name__ == "__main__":
    main()
