import copy

import pika
import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.amqp import AmqpError
from ansible_collections.testfleet.infra.plugins.module_utils.topology import (
    DEFAULT_TOPOLOGY, TopologyError, TopologyMismatch, binding_label, broker_error, expand)

WORK_QUEUES = ["events", "tests.public", "tests.internal", "images", "releases"]


def work_arguments(limit=5, dlx="testfleet.dead-letter", single_active_consumer=False):
    arguments = {"x-queue-type": "quorum", "x-dead-letter-exchange": dlx, "x-delivery-limit": limit,
                 "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    if single_active_consumer:
        arguments["x-single-active-consumer"] = True
    return arguments


@pytest.mark.parametrize("description", [None, {}, copy.deepcopy(DEFAULT_TOPOLOGY)])
def test_the_defaults(description):
    assert expand(description) == {
        "exchanges": [{"name": "testfleet.dead-letter", "type": "fanout", "durable": True},
                      {"name": "testfleet", "type": "direct", "durable": True}],
        "queues": [{"name": "dead-letter", "durable": True, "arguments": {"x-queue-type": "quorum"}}]
        + [{"name": name, "durable": True, "arguments": work_arguments(single_active_consumer=name == "events")}
           for name in WORK_QUEUES],
        "bindings": [{"exchange": "testfleet.dead-letter", "queue": "dead-letter", "routing_key": ""}]
        + [{"exchange": "testfleet", "queue": name, "routing_key": name} for name in WORK_QUEUES],
    }


def test_expand_does_not_modify_its_input_or_the_defaults():
    description = {"queues": ["a"]}
    expand(description)
    assert description == {"queues": ["a"]}
    assert DEFAULT_TOPOLOGY["queues"] == WORK_QUEUES


def test_overrides():
    topology = expand({
        "exchange": "ci", "dead_letter_exchange": "ci.dlx", "dead_letter_queue": "ci.dead",
        "delivery_limit": 3,
        "queues": ["a", {"name": "b", "delivery_limit": 9}, {"name": "c"}],
    })
    assert [e["name"] for e in topology["exchanges"]] == ["ci.dlx", "ci"]
    assert topology["queues"] == [
        {"name": "ci.dead", "durable": True, "arguments": {"x-queue-type": "quorum"}},
        {"name": "a", "durable": True, "arguments": work_arguments(3, "ci.dlx")},
        {"name": "b", "durable": True, "arguments": work_arguments(9, "ci.dlx")},
        {"name": "c", "durable": True, "arguments": work_arguments(3, "ci.dlx")},
    ]
    assert [binding_label(b) for b in topology["bindings"]] == [
        "ci.dlx[] -> ci.dead", "ci[a] -> a", "ci[b] -> b", "ci[c] -> c"]


def test_single_active_consumer_is_on_for_events_by_default_and_can_be_set_per_queue():
    def arguments(queues):
        return dict((q["name"], q["arguments"].get("x-single-active-consumer", False))
                    for q in expand({"queues": queues})["queues"][1:])

    assert arguments(["events", "tests.public"]) == {"events": True, "tests.public": False}
    assert arguments([{"name": "events"}, {"name": "other"}]) == {"events": True, "other": False}
    assert arguments([{"name": "events", "single_active_consumer": False},
                      {"name": "scans", "single_active_consumer": True}]) == {"events": False, "scans": True}
    # off means the argument is absent (RabbitMQ compares arguments: none is not false)
    queue = expand({"queues": [{"name": "events", "single_active_consumer": False}]})["queues"][1]
    assert "x-single-active-consumer" not in queue["arguments"]


@pytest.mark.parametrize("description,key,problem", [
    ([], "(topology)", "must be a mapping"),
    ({"queue": ["a"]}, "queue", "is not a topology key (known keys: exchange, dead_letter_exchange"),
    ({1: "x"}, "1", "is not a topology key"),
    ({"exchange": ""}, "exchange", "must be a name"),
    ({"exchange": "amq.direct"}, "exchange", "not starting with 'amq.'"),
    ({"exchange": "has space"}, "exchange", "must be a name"),
    ({"exchange": "x" * 256}, "exchange", "must be a name"),
    ({"exchange": None}, "exchange", "must be a name"),
    ({"dead_letter_exchange": 5}, "dead_letter_exchange", "must be a name"),
    ({"dead_letter_exchange": "testfleet"}, "dead_letter_exchange", "must differ from 'exchange'"),
    ({"dead_letter_queue": "amq.q"}, "dead_letter_queue", "must be a name"),
    ({"delivery_limit": 0}, "delivery_limit", "must be a positive integer"),
    ({"delivery_limit": "5"}, "delivery_limit", "must be a positive integer"),
    ({"delivery_limit": True}, "delivery_limit", "must be a positive integer"),
    ({"queues": []}, "queues", "must be a non-empty list"),
    ({"queues": "events"}, "queues", "must be a non-empty list"),
    ({"queues": ["a", 7]}, "queues[1]", "must be a queue name or a mapping"),
    ({"queues": ["a", "b/c"]}, "queues[1]", "must be a name"),
    ({"queues": [{"delivery_limit": 2}]}, "queues[0].name", "is required"),
    ({"queues": [{"name": "a", "limit": 2}]}, "queues[0].limit", "is not a queue key"),
    ({"queues": [{"name": "a", "delivery_limit": -1}]}, "queues[0].delivery_limit",
     "must be a positive integer"),
    ({"queues": [{"name": "a", "single_active_consumer": "yes"}]}, "queues[0].single_active_consumer",
     "must be true or false, got 'yes'"),
    ({"queues": ["a", {"name": "a"}]}, "queues[1]", "repeats the queue name 'a'"),
    ({"queues": ["dead-letter"]}, "queues[0]", "repeats the queue name 'dead-letter'"),
])
def test_errors_name_the_key(description, key, problem):
    with pytest.raises(TopologyError) as info:
        expand(description)
    assert info.value.key == key
    assert problem in str(info.value)
    assert str(info.value).startswith("invalid topology: %r" % key)


def closed(code, text):
    return pika.exceptions.ChannelClosedByBroker(code, text)


@pytest.mark.parametrize("text,argument,broker,wanted", [
    ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'events' in vhost '/':"
     " received '6' but current is '5'", "x-delivery-limit", "5", "6"),
    ("PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'events' in vhost"
     " '/': received none but current is the value 'dlx' of type 'longstr'",
     "x-dead-letter-exchange", "dlx", None),
    ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'events' in vhost '/':"
     " received the value '5' of type 'signedint' but current is none", "x-delivery-limit", None, "5"),
])
def test_inequivalent_queue_arguments_are_parsed(text, argument, broker, wanted):
    error = broker_error("queue", "events", closed(406, text))
    assert isinstance(error, TopologyMismatch)
    assert error.mismatches == [{"kind": "queue", "name": "events", "vhost": "/",
                                 "argument": argument, "broker": broker, "wanted": wanted}]
    message = str(error)
    assert message.startswith("queue 'events' already exists with different settings: %s is " % argument)
    assert "not set" in message if broker is None else repr(broker) in message
    assert "cannot change the arguments of an existing queue" in message
    assert "rabbitmqctl delete_queue -p / events" in message


def test_a_single_active_consumer_mismatch_on_events_says_how_to_migrate():
    # the reply of RabbitMQ 3.10.8 when events exists without the argument
    error = broker_error("queue", "events", closed(
        406, "PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for queue 'events' in "
             "vhost 'testfleet': received the value 'true' of type 'bool' but current is none"))
    assert error.mismatches == [{"kind": "queue", "name": "events", "vhost": "testfleet",
                                 "argument": "x-single-active-consumer", "broker": None, "wanted": "true"}]
    message = str(error)
    assert message.startswith("queue 'events' already exists with different settings: x-single-active-consumer "
                              "is not set on the broker, the topology wants 'true'. ")
    assert "rabbitmqctl delete_queue -p testfleet events" in message
    assert "`testfleet scan` re-derives all missing work from GitHub" in message
    # other queues are not told that their messages may be dropped
    other = str(broker_error("queue", "tests.public", closed(
        406, "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'tests.public' in vhost '/':"
             " received '6' but current is '5'")))
    assert "testfleet scan" not in other


def test_an_exchange_mismatch_explains_its_own_migration():
    error = broker_error("exchange", "testfleet", closed(
        406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'testfleet' in vhost "
             "'/': received 'direct' but current is 'fanout'"))
    assert str(error).startswith("exchange 'testfleet' already exists with different settings: "
                                 "type is 'fanout' on the broker, the topology wants 'direct'.")
    assert "delete exchange 'testfleet'" in str(error)


def test_several_mismatches_in_one_message():
    first = {"kind": "queue", "name": "a", "vhost": "ci", "argument": "x-queue-type",
             "broker": "classic", "wanted": "quorum"}
    second = dict(first, name="b")
    message = str(TopologyMismatch([first, second]))
    assert "queue 'a' already exists" in message and "queue 'b' already exists" in message
    assert "rabbitmqctl delete_queue -p ci b" in message


@pytest.mark.parametrize("exc,expected", [
    (closed(403, "ACCESS_REFUSED - access to queue 'q' refused"),
     "the broker refused to declare queue 'q': 403 ACCESS_REFUSED - access to queue 'q' refused "
     "(the user needs the configure permission on it)"),
    (closed(406, "PRECONDITION_FAILED - something else"),
     "the broker refused to declare queue 'q': 406 PRECONDITION_FAILED - something else"),
    (pika.exceptions.StreamLostError("lost"), "declaring queue 'q' failed: StreamLostError"),
])
def test_other_broker_errors(exc, expected):
    error = broker_error("queue", "q", exc)
    assert isinstance(error, AmqpError) and not isinstance(error, TopologyMismatch)
    assert str(error) == expected
