# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of module_utils/amqp.py: its ConfirmedPublisher against the same work in raw pika.

    .venv/bin/python bench/amqp.py [--url URL] [--messages 3000] [--rounds 5]

Both publish the same ~1 KB job, persistent, mandatory, one at a time with publisher confirms
(each publish waits for its confirm), with the same properties (content type, message id,
timestamp), over connections made from the same settings, to one quorum queue of its own
(``bench-<id>.amqp``, purged between runs and deleted at the end). Rounds alternate which client
goes first; the figures are the medians over the rounds.

The broker is ``--url``, else ``TESTFLEET_AMQP_URL`` (default amqp://guest:guest@127.0.0.1:5672/),
with ``TESTFLEET_AMQP_PASSWORD_FILE`` / ``_CA_FILE`` / ``_CERT_FILE`` / ``_KEY_FILE`` as in the tests.

Prints one JSON line per run, then a last line with one JSON object: ``library_per_s``,
``raw_pika_per_s``, ``overhead_pct`` (how much slower the library is, in percent of raw pika),
``messages``, ``rounds``, ``message_bytes``, ``broker_version``, and the client's CPU time per
message of each (``*_cpu_us_per_msg``), which a busy machine disturbs less than the rates.
"""

import argparse
import json
import os
import statistics
import time
import uuid

from collection_path import import_collection


import_collection()

import pika  # noqa: E402  (after the path set-up, like the collection)

from ansible_collections.testfleet.infra.plugins.module_utils import amqp  # noqa: E402
from ansible_collections.testfleet.infra.plugins.module_utils.jobs import encode_job  # noqa: E402


def job_body():
    """A valid test job of about 1 KB, as the scanner would publish it."""
    job = {"version": 1, "id": "bench-0", "kind": "test", "repo": "owner/project",
           "sha": "0123456789abcdef0123456789abcdef01234567", "ref": "refs/pull/42/head",
           "pull": 42, "context": "debian-12/default", "timeout": 7200,
           "report": {"status": True, "log_store": "s3://ci-logs/logs"},
           "args": {"padding": ""}}
    job["args"]["padding"] = "x" * (1024 - len(encode_job(job)))
    return encode_job(job)


def publish_library(connection, queue, body, count):
    publisher = amqp.ConfirmedPublisher(connection)
    for number in range(count):
        publisher.publish("", queue, body, message_id="bench-%d" % number)


def publish_raw(connection, queue, body, count):
    channel = connection.channel()
    channel.confirm_delivery()
    for number in range(count):
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
            message_id="bench-%d" % number, timestamp=int(time.time()))
        channel.basic_publish("", queue, body, properties, mandatory=True)


CLIENTS = {"library": publish_library, "raw_pika": publish_raw}


def run(settings, queue, body, client, count):
    """One run on a fresh connection: (wall-clock seconds, this process's CPU seconds)."""
    connection = amqp.connect(settings)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        CLIENTS[client](connection, queue, body, count)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        connection.channel().queue_purge(queue)
    finally:
        connection.close()
    return seconds, cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--url", default=os.environ.get("TESTFLEET_AMQP_URL",
                                                        "amqp://guest:guest@127.0.0.1:5672/"))
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    files = dict((name, os.environ.get("TESTFLEET_AMQP_" + name.upper()))
                 for name in ("password_file", "ca_file", "cert_file", "key_file"))
    settings = amqp.AmqpSettings(args.url, connection_name="testfleet bench/amqp.py", **files)

    queue = "bench-%s.amqp" % uuid.uuid4().hex[:8]
    body = job_body()
    admin = amqp.connect(settings)
    version = admin._impl.server_properties.get("version", b"")  # pylint: disable=protected-access
    admin.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    rates = {"library": [], "raw_pika": []}
    cpu_us = {"library": [], "raw_pika": []}
    try:
        for number in range(args.rounds):
            order = ["library", "raw_pika"] if number % 2 == 0 else ["raw_pika", "library"]
            for client in order:
                seconds, cpu = run(settings, queue, body, client, args.messages)
                rates[client].append(args.messages / seconds)
                cpu_us[client].append(cpu / args.messages * 1e6)
                print(json.dumps({"round": number + 1, "client": client, "messages": args.messages,
                                  "seconds": round(seconds, 3),
                                  "per_s": round(rates[client][-1], 1),
                                  "cpu_us_per_msg": round(cpu_us[client][-1], 1)}), flush=True)
    finally:
        admin.channel().queue_delete(queue)
        admin.close()

    library = statistics.median(rates["library"])
    raw = statistics.median(rates["raw_pika"])
    print(json.dumps({
        "library_per_s": round(library, 1), "raw_pika_per_s": round(raw, 1),
        "overhead_pct": round((raw - library) / raw * 100, 2),
        "library_cpu_us_per_msg": round(statistics.median(cpu_us["library"]), 1),
        "raw_pika_cpu_us_per_msg": round(statistics.median(cpu_us["raw_pika"]), 1),
        "messages": args.messages, "rounds": args.rounds, "message_bytes": len(body),
        "queue_type": "quorum", "in_flight": 1,
        "broker_version": str(version),
        "broker": settings.display_url,
    }))


if __name__ == "__main__":
    main()
