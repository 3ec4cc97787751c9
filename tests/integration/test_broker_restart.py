"""Queues and persistent messages survive a restart of the broker.

This restarts the local RabbitMQ: anything else using it at the time loses its connections.
Deselect with ``-m "not broker_restart"``.
"""

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.topology import expand


@pytest.mark.broker_restart
def test_queues_and_persistent_messages_survive_a_restart(run_module, amqp_options, amqp_settings,
                                                          topology, restart_broker):
    expanded = expand(topology)
    work = expanded["queues"][1]["name"]
    assert run_module("amqp_topology", dict(amqp_options, topology=topology))["changed"]
    jobs = [{"version": 1, "id": "restart-%d" % n, "kind": "scan", "repo": "owner/project"}
            for n in range(3)]
    for job in jobs:
        published = run_module("amqp_publish", dict(amqp_options, exchange=topology["exchange"],
                                                    queue=work, job=job))
        assert published["changed"] is True, published

    restart_broker()
    amqp.connect(amqp_settings, attempts=10, retry_delay=1.0).close()  # accepts AMQP again

    after = run_module("amqp_topology", dict(amqp_options, topology=topology))
    assert after["changed"] is False, after  # everything still there, with the same arguments
    for job in jobs:  # in the order they were published
        taken = run_module("amqp_get", dict(amqp_options, queue=work, wait=10))
        assert taken["body"] == job, taken
    assert taken["message_count"] == 0
