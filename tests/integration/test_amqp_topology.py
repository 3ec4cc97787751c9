import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.amqp import ConfirmedPublisher
from ansible_collections.testfleet.infra.plugins.module_utils.topology import (
    TopologyMismatch, binding_label, ensure_queue, expand)


def names(expanded, group):
    return [item["name"] for item in expanded[group]]


def test_apply_twice(run_module, amqp_options, topology, inspect):
    expanded = expand(topology)
    first = run_module("amqp_topology", dict(amqp_options, topology=topology), diff=True)
    assert first["changed"] is True, first
    assert first["created"] == {"exchanges": names(expanded, "exchanges"),
                                "queues": names(expanded, "queues"),
                                "bindings": expanded["bindings"]}
    assert first["topology"] == expanded
    assert first["diff"]["before"] == {"exchanges": [], "queues": [], "bindings": []}
    for kind, group in (("exchange", "exchanges"), ("queue", "queues")):
        assert all(inspect.exists(kind, name) for name in names(expanded, group))

    second = run_module("amqp_topology", dict(amqp_options, topology=topology), diff=True)
    assert second["changed"] is False, second
    assert second["created"] == {"exchanges": [], "queues": [], "bindings": []}
    assert second["diff"]["before"] == second["diff"]["after"] == {
        "exchanges": names(expanded, "exchanges"), "queues": names(expanded, "queues"),
        "bindings": [binding_label(b) for b in expanded["bindings"]]}


def test_check_mode_creates_nothing(run_module, amqp_options, topology, inspect):
    expanded = expand(topology)
    checked = run_module("amqp_topology", dict(amqp_options, topology=topology), check_mode=True)
    assert checked["changed"] is True
    assert checked["created"]["queues"] == names(expanded, "queues")
    assert not any(inspect.exists("queue", name) for name in names(expanded, "queues"))
    assert not any(inspect.exists("exchange", name) for name in names(expanded, "exchanges"))

    run_module("amqp_topology", dict(amqp_options, topology=topology))
    again = run_module("amqp_topology", dict(amqp_options, topology=topology), check_mode=True)
    assert again["changed"] is False


def test_only_the_missing_queue_and_its_binding_are_created(run_module, amqp_options, topology,
                                                            broker):
    expanded = expand(topology)
    ensure_queue(broker.channel(), topology, expanded["queues"][1]["name"])
    result = run_module("amqp_topology", dict(amqp_options, topology=topology))
    assert result["changed"] is True
    assert result["created"] == {"exchanges": [], "queues": [expanded["queues"][2]["name"]],
                                 "bindings": [expanded["bindings"][2]]}


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_queue_with_other_arguments_is_reported_and_left_alone(
        run_module, amqp_options, topology, broker, inspect, vhost, check_mode):
    expanded = expand(topology)
    work = expanded["queues"][1]["name"]
    old_arguments = {"x-queue-type": "quorum", "x-delivery-limit": 7}
    channel = broker.channel()
    channel.queue_declare(work, durable=True, arguments=old_arguments)
    publisher = ConfirmedPublisher(broker)
    for number in range(3):
        publisher.publish("", work, b"message %d" % number)

    result = run_module("amqp_topology", dict(amqp_options, topology=topology), check_mode=check_mode)
    assert result["failed"] is True
    assert result["msg"].startswith(
        "queue %r already exists with different settings: x-dead-letter-exchange is not set on "
        "the broker, the topology wants %r." % (work, topology["dead_letter_exchange"]))
    assert "cannot change the arguments of an existing queue" in result["msg"]
    assert "rabbitmqctl delete_queue -p %s %s" % (vhost, work) in result["msg"]
    assert result["mismatches"] == [{"kind": "queue", "name": work, "vhost": vhost,
                                     "argument": "x-dead-letter-exchange", "broker": None,
                                     "wanted": topology["dead_letter_exchange"]}]

    assert inspect.message_count(work) == 3
    broker.channel().queue_declare(work, durable=True, arguments=old_arguments)  # unchanged
    assert not inspect.exists("exchange", topology["exchange"])  # nothing was created
    assert not inspect.exists("queue", expanded["queues"][2]["name"])


def test_every_mismatch_is_listed(run_module, amqp_options, topology, broker):
    expanded = expand(topology)
    channel = broker.channel()
    channel.exchange_declare(topology["exchange"], exchange_type="fanout", durable=True)
    channel.queue_declare(expanded["queues"][2]["name"], durable=True,
                          arguments=dict(expanded["queues"][2]["arguments"], **{"x-delivery-limit": 9}))
    result = run_module("amqp_topology", dict(amqp_options, topology=topology))
    assert result["failed"] is True
    assert [(m["kind"], m["argument"], m["broker"], m["wanted"]) for m in result["mismatches"]] == [
        ("exchange", "type", "fanout", "direct"), ("queue", "x-delivery-limit", "9", "4")]
    assert "delete exchange %r" % topology["exchange"] in result["msg"]


def test_ensure_queue_makes_a_queue_usable(topology, broker, inspect):
    expanded = expand(topology)
    work = expanded["queues"][1]
    channel = broker.channel()
    assert ensure_queue(channel, topology, work["name"]) == work
    assert ensure_queue(channel, topology, work["name"]) == work  # idempotent
    assert inspect.exists("queue", expanded["queues"][0]["name"])  # the dead-letter queue
    assert not inspect.exists("queue", expanded["queues"][2]["name"])  # not asked for
    ConfirmedPublisher(broker).publish(topology["exchange"], work["name"], b"routed")
    assert inspect.message_count(work["name"], expected=1) == 1


def test_ensure_queue_reports_a_mismatch(topology, broker, vhost):
    expanded = expand(topology)
    work = expanded["queues"][1]
    ensure_queue(broker.channel(), topology, work["name"])
    changed = dict(topology, delivery_limit=3)
    with pytest.raises(TopologyMismatch) as info:
        ensure_queue(broker.channel(), changed, work["name"])
    assert info.value.mismatches == [{"kind": "queue", "name": work["name"], "vhost": vhost,
                                      "argument": "x-delivery-limit", "broker": "2", "wanted": "3"}]


def test_turning_on_single_active_consumer_is_a_mismatch_that_says_how_to_migrate(
        run_module, amqp_options, topology, broker, inspect, vhost):
    expanded = expand(topology)
    work = expanded["queues"][1]["name"]
    run_module("amqp_topology", dict(amqp_options, topology=topology))  # the queue without the argument
    ConfirmedPublisher(broker).publish(topology["exchange"], work, b"kept")
    wanted = dict(topology, queues=[{"name": work, "single_active_consumer": True}] + topology["queues"][1:])
    result = run_module("amqp_topology", dict(amqp_options, topology=wanted))
    assert result["failed"] is True
    assert result["mismatches"] == [{"kind": "queue", "name": work, "vhost": vhost,
                                     "argument": "x-single-active-consumer", "broker": None, "wanted": "true"}]
    assert result["msg"].startswith("queue %r already exists with different settings: x-single-active-consumer "
                                    "is not set on the broker, the topology wants 'true'." % work)
    assert "rabbitmqctl delete_queue -p %s %s" % (vhost, work) in result["msg"]
    assert inspect.message_count(work) == 1  # left alone


def test_a_single_active_consumer_queue_feeds_one_consumer_at_a_time(amqp_settings, topology, broker):
    from ansible_collections.testfleet.infra.plugins.module_utils import amqp

    work = expand(topology)["queues"][1]["name"]
    single = dict(topology, queues=[{"name": work, "single_active_consumer": True}])
    queue = ensure_queue(broker.channel(), single, work)
    assert queue["arguments"]["x-single-active-consumer"] is True
    publisher = ConfirmedPublisher(broker)
    for number in range(4):
        publisher.publish(topology["exchange"], work, b"m%d" % number)
    connections = [amqp.connect(amqp_settings) for dummy in range(2)]
    try:
        got = [[], []]
        channels = []
        for index, connection in enumerate(connections):
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1)
            channel.basic_consume(work, lambda ch, method, props, body, index=index: got[index].append(method.delivery_tag))
            channels.append(channel)
        for dummy in range(20):
            for connection in connections:
                connection.process_data_events(0.05)
        # the first consumer holds one unacked message; the second gets none meanwhile
        assert (len(got[0]), len(got[1])) == (1, 0)
        channels[0].basic_ack(got[0][0])
        for dummy in range(20):
            for connection in connections:
                connection.process_data_events(0.05)
        assert (len(got[0]), len(got[1])) == (2, 0)
        connections[0].close()  # the active consumer goes away: the other one takes over
        for dummy in range(40):
            connections[1].process_data_events(0.05)
            if got[1]:
                break
        assert len(got[1]) == 1
    finally:
        for connection in connections:
            if connection.is_open:
                connection.close()
