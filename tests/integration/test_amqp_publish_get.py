import json
import socket
import threading
import time

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.topology import expand


def make_job(number=1, **fields):
    job = {"version": 1, "id": "job-%d" % number, "kind": "test", "repo": "owner/project",
           "sha": "0123456789abcdef0123456789abcdef01234567", "context": "debian-12/default",
           "pull": 7, "args": {"n": number}}
    job.update(fields)
    return job


@pytest.fixture
def queues(run_module, amqp_options, topology):
    """Apply the test topology; return the names of its work queue and dead-letter queue."""
    assert run_module("amqp_topology", dict(amqp_options, topology=topology))["changed"]
    expanded = expand(topology)
    return {"work": expanded["queues"][1]["name"], "dead": expanded["queues"][0]["name"],
            "exchange": topology["exchange"]}


def publish(run_module, amqp_options, queues, job, **options):
    return run_module("amqp_publish", dict(amqp_options, queue=queues["work"],
                                           exchange=queues["exchange"], job=job), **options)


def test_publish_and_get_round_trip(run_module, amqp_options, queues, inspect):
    job = make_job()
    published = publish(run_module, amqp_options, queues, job, diff=True)
    assert published["changed"] is True, published
    assert (published["message_id"], published["queue"], published["job"]) == ("job-1", queues["work"], job)
    assert published["diff"]["after"] == job

    looked = run_module("amqp_get", dict(amqp_options, queue=queues["work"]), check_mode=True)
    assert (looked["changed"], looked["empty"], looked["message_count"]) == (True, False, 1)
    assert inspect.message_count(queues["work"]) == 1  # check mode took nothing

    taken = run_module("amqp_get", dict(amqp_options, queue=queues["work"], message_id="job-1"))
    assert taken["changed"] is True
    assert taken["empty"] is False
    assert taken["body"] == job and taken["body_is_json"] is True
    assert taken["message_id"] == "job-1"
    assert taken["content_type"] == "application/json"
    assert (taken["delivery_count"], taken["redelivered"]) == (0, False)
    assert (taken["exchange"], taken["routing_key"], taken["message_count"]) == (
        queues["exchange"], queues["work"], 0)

    empty = run_module("amqp_get", dict(amqp_options, queue=queues["work"]))
    assert (empty["changed"], empty["empty"], empty["message_count"]) == (False, True, 0)
    assert "body" not in empty
    checked = run_module("amqp_get", dict(amqp_options, queue=queues["work"]), check_mode=True)
    assert (checked["changed"], checked["empty"]) == (False, True)


def test_get_waits_for_a_message(run_module, amqp_options, queues, amqp_settings):
    def publish_later():
        time.sleep(1.5)
        connection = amqp.connect(amqp_settings)
        amqp.ConfirmedPublisher(connection).publish(queues["exchange"], queues["work"], b"late",
                                                    message_id="late-1")
        connection.close()

    thread = threading.Thread(target=publish_later)
    started = time.monotonic()
    thread.start()
    taken = run_module("amqp_get", dict(amqp_options, queue=queues["work"], wait=20))
    thread.join()
    assert (taken["message_id"], taken["body"], taken["body_is_json"]) == ("late-1", "late", False)
    assert 1.5 <= time.monotonic() - started < 10


def test_get_with_another_message_id_puts_the_message_back(run_module, amqp_options, queues, inspect):
    publish(run_module, amqp_options, queues, make_job(1))
    refused = run_module("amqp_get", dict(amqp_options, queue=queues["work"], message_id="job-2"))
    assert refused["failed"] is True
    assert refused["found_message_id"] == "job-1"
    assert "has message_id 'job-1', not 'job-2': it was put back" in refused["msg"]
    assert inspect.message_count(queues["work"], expected=1) == 1
    taken = run_module("amqp_get", dict(amqp_options, queue=queues["work"]))
    assert (taken["message_id"], taken["delivery_count"], taken["redelivered"]) == ("job-1", 1, True)


def test_get_from_a_missing_queue_fails(run_module, amqp_options, prefix, vhost):
    result = run_module("amqp_get", dict(amqp_options, queue=prefix + "absent"))
    assert result["failed"] is True
    assert result["msg"] == ("the broker refused to read queue %r: 404 NOT_FOUND - no queue %r "
                             "in vhost %r" % (prefix + "absent", prefix + "absent", vhost))


def test_an_unroutable_publish_fails(run_module, amqp_options, queues, inspect):
    result = run_module("amqp_publish", dict(amqp_options, queue=queues["work"] + ".unbound",
                                             exchange=queues["exchange"], job=make_job()))
    assert result["failed"] is True and result["changed"] is False
    assert result["msg"].startswith("no queue is bound to exchange %r with routing key %r: the "
                                    "message was returned" % (queues["exchange"], queues["work"] + ".unbound"))
    assert inspect.message_count(queues["work"]) == 0


def test_publishing_to_a_missing_exchange_fails(run_module, amqp_options, queues):
    result = run_module("amqp_publish", dict(amqp_options, queue=queues["work"],
                                             exchange=queues["exchange"] + ".absent", job=make_job()))
    assert result["failed"] is True
    assert "404 NOT_FOUND - no exchange" in result["msg"]


def test_an_invalid_job_publishes_nothing(run_module, amqp_options, queues, inspect):
    result = publish(run_module, amqp_options, queues, make_job(sha="not-a-sha"))
    assert result["failed"] is True and result["field"] == "sha"
    assert "message_id" not in result
    assert inspect.message_count(queues["work"]) == 0


def test_a_poison_message_ends_in_the_dead_letter_queue(run_module, amqp_options, queues, broker,
                                                        inspect):
    job = make_job(9)
    publish(run_module, amqp_options, queues, job)
    channel = broker.channel()
    deliveries = 0
    deadline = time.monotonic() + 30
    while inspect.message_count(queues["dead"]) == 0 and time.monotonic() < deadline:
        method = channel.basic_get(queues["work"])[0]
        if method is None:
            broker.sleep(0.05)
            continue
        deliveries += 1
        channel.basic_nack(method.delivery_tag, requeue=True)  # a worker that keeps failing
    assert deliveries == 3  # the first delivery and delivery_limit (2) more
    assert inspect.message_count(queues["work"]) == 0

    dead = run_module("amqp_get", dict(amqp_options, queue=queues["dead"]))
    assert (dead["message_id"], dead["body"]) == ("job-9", job)
    assert dead["headers"]["x-first-death-reason"] == "delivery_limit"
    assert dead["headers"]["x-first-death-queue"] == queues["work"]
    death = dead["headers"]["x-death"][0]
    assert (death["reason"], death["queue"], death["routing-keys"]) == (
        "delivery_limit", queues["work"], [queues["work"]])
    json.dumps(dead)  # every header value is plain JSON


def test_a_wrong_password_is_refused_without_showing_it(run_module, amqp_options, wrong_password_url):
    options = dict((k, v) for k, v in amqp_options.items() if k != "password_file")
    result = run_module("amqp_get", dict(options, url=wrong_password_url, queue="any"))
    assert result["failed"] is True
    assert result["error"] == "AuthenticationFailed"
    assert "refused the user and password" in result["msg"]
    assert "Wr0ng-Pa55word" not in json.dumps(result)
    assert result["invocation"]["module_args"]["url"].startswith("amqp")


def test_a_wrong_password_file_is_refused_without_showing_it(run_module, amqp_options,
                                                             wrong_password_url, tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("File-Pa55word\n")
    url = wrong_password_url.replace(":Wr0ng-Pa55word@", "@")
    result = run_module("amqp_publish", dict(amqp_options, url=url, password_file=str(password_file),
                                             queue="any", job=make_job()))
    assert result["error"] == "AuthenticationFailed"
    assert "File-Pa55word" not in json.dumps(result)


def test_an_unreachable_port(run_module, amqp_options):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_module("amqp_topology", dict(amqp_options, url="amqp://127.0.0.1:%d/" % port,
                                              connect_timeout=3))
    assert result["failed"] is True
    assert result["error"] == "BrokerUnreachable"
    assert result["msg"].startswith("cannot reach the broker at amqp://127.0.0.1:%d/" % port)


def test_get_from_a_single_active_consumer_queue(run_module, amqp_options, topology, prefix, cleanup):
    # quorum queues with a single active consumer (events) refuse basic.get: amqp_get consumes
    sac = dict(topology, queues=[{"name": prefix + "events", "single_active_consumer": True}])
    cleanup["queues"].add(prefix + "events")
    assert run_module("amqp_topology", dict(amqp_options, topology=sac))["changed"]
    for number in (1, 2):
        assert run_module("amqp_publish", dict(amqp_options, queue=prefix + "events", exchange=sac["exchange"],
                                               job=make_job(number)))["changed"]
    first = run_module("amqp_get", dict(amqp_options, queue=prefix + "events", message_id="job-1"))
    assert (first["message_id"], first["message_count"], first["delivery_count"]) == ("job-1", 1, 0)
    second = run_module("amqp_get", dict(amqp_options, queue=prefix + "events", wait=2))
    assert (second["message_id"], second["message_count"], second["redelivered"]) == ("job-2", 0, False)
    assert run_module("amqp_get", dict(amqp_options, queue=prefix + "events"))["empty"] is True


def test_get_drops_leftovers_that_match_the_discard_pattern(run_module, amqp_options, queues, inspect):
    publish(run_module, amqp_options, queues, make_job(1, id="sample-old-1"))
    publish(run_module, amqp_options, queues, make_job(2, id="sample-old-2"))
    publish(run_module, amqp_options, queues, make_job(3, id="real-work"))
    publish(run_module, amqp_options, queues, make_job(4, id="sample-new"))
    refused = run_module("amqp_get", dict(amqp_options, queue=queues["work"], message_id="sample-new",
                                          discard_pattern="^sample-"))
    # the leftovers went, the real job stopped the search and is still there
    assert refused["failed"] is True and refused["found_message_id"] == "real-work"
    assert refused["discarded"] == ["sample-old-1", "sample-old-2"]
    assert inspect.message_count(queues["work"], expected=2) == 2
    bad = run_module("amqp_get", dict(amqp_options, queue=queues["work"], discard_pattern="^sample-"))
    assert bad["failed"] is True and bad["msg"] == "discard_pattern needs message_id (what to look for)"
