# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of testfleet-webhook: signed deliveries over HTTP, confirmed by the real broker.

    .venv/bin/python bench/webhook.py                      # starts its own webhook
    .venv/bin/python bench/webhook.py --url http://127.0.0.1:8080/webhook --secret-file S

Without ``--url`` it starts ``bin/testfleet-webhook`` in its own process, with a config whose
topology uses names of its own (``bench-<id>...``, deleted at the end), against the broker of
``--amqp-url`` (default: ``TESTFLEET_AMQP_URL``; the password from ``--password-file`` or
``TESTFLEET_AMQP_PASSWORD_FILE``). It sends the deliveries of ``tests/fixtures/webhooks/`` (and of
``../shared/fixtures/github-webhooks/`` when it exists) that the default event filter queues,
each signed with the secret and with a unique ``X-GitHub-Delivery``, at concurrency 1, 8 and
32 (one keep-alive connection each) for ``--duration`` seconds a level. The load generator is
a minimal HTTP/1.1 client on asyncio streams over pre-built, pre-signed requests, so that it
costs the machine as little as possible.

It also measures the ceiling: the same broker's confirmed-publish rate of the same messages,
32 in flight on one channel, with no HTTP in between. When it started the webhook it checks
that the queue holds exactly as many messages as were answered ``queued``.

Prints one JSON line per level, then a last line with one JSON object: ``c1_per_s``,
``c1_p50_ms``, ``c1_p99_ms``, the same for c8 and c32, ``broker_ceiling_per_s``, ``errors``,
``lost`` and the setup.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

from urllib.parse import urlsplit

from collection_path import import_collection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = [os.path.join(ROOT, "tests", "fixtures", "webhooks"),
            os.path.normpath(os.path.join(ROOT, "..", "shared", "fixtures", "github-webhooks"))]


def load_deliveries(folders, events):
    """(event, body bytes, source) of every fixture file the event filter ``events`` queues."""
    found = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for event in sorted(os.listdir(folder)):
            directory = os.path.join(folder, event)
            if not os.path.isdir(directory) or event not in events:
                continue
            for name in sorted(os.listdir(directory)):
                if not name.endswith(".json"):
                    continue
                with open(os.path.join(directory, name), "rb") as handle:
                    body = handle.read()
                action = json.loads(body).get("action")
                if events[event] is None or action in events[event]:
                    found.append((event, body, os.path.join(directory, name)))
    return found


class Requests:
    """Pre-built HTTP requests: fixed bytes around a fresh delivery id for each request."""

    def __init__(self, url, deliveries, secret, sign):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.templates = []
        for event, body, dummy in deliveries:
            head = ("POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: GitHub-Hookshot/bench\r\n"
                    "Content-Type: application/json\r\nContent-Length: %d\r\n"
                    "X-GitHub-Event: %s\r\nX-Hub-Signature-256: %s\r\nX-GitHub-Delivery: "
                    % (parts.path or "/", parts.netloc, len(body), event, sign(secret, body)))
            self.templates.append((head.encode("ascii"), b"\r\n\r\n" + body))
        self.counter = 0

    def next(self):
        self.counter += 1
        head, tail = self.templates[self.counter % len(self.templates)]
        return b"".join((head, uuid.uuid4().hex.encode("ascii"), tail))


async def client(requests, deadline, latencies, statuses):
    reader, writer = await asyncio.open_connection(requests.host, requests.port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter
    try:
        while clock() < deadline:
            request = requests.next()
            started = clock()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15:head.index(b"\r\n", at)]) if at >= 0 else 0
            answer = await reader.readexactly(length)
            elapsed = clock() - started
            queued = status == 202 and b'"queued"' in answer
            statuses[status if not (status == 202 and not queued) else "202-not-queued"] = \
                statuses.get(status, 0) + 1
            if queued:
                latencies.append(elapsed)
    finally:
        writer.close()


def percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


async def run_level(requests, concurrency, duration, warmup):
    warm = []
    if warmup:
        await asyncio.gather(*(client(requests, time.perf_counter() + warmup, warm, {})
                               for dummy in range(concurrency)))
    latencies, statuses = [], {}
    started = time.perf_counter()
    await asyncio.gather(*(client(requests, started + duration, latencies, statuses)
                           for dummy in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "concurrency": concurrency, "seconds": round(elapsed, 3), "queued": len(latencies),
        "per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2) if latencies else None,
        "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "statuses": dict((str(k), v) for k, v in statuses.items()),
        "warmup_queued": len(warm),
    }


async def broker_ceiling(settings, description, queue, bodies, duration, in_flight=32):
    """Confirmed persistent publishes per second, ``in_flight`` at a time, on one channel."""
    from ansible_collections.testfleet.infra.programs.webhook.publisher import AsyncPublisher
    publisher = AsyncPublisher(settings, description, queue, timeout=30, app_id="bench")
    if not await publisher.start(wait=15):
        raise SystemExit("bench: the broker is not reachable: %s" % publisher.last_error)
    count = 0

    async def worker(deadline):
        nonlocal count
        index = 0
        while time.perf_counter() < deadline:
            index += 1
            await publisher.publish(bodies[index % len(bodies)], message_id=uuid.uuid4().hex)
            count += 1

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + duration) for dummy in range(in_flight)))
        elapsed = time.perf_counter() - started
    finally:
        await publisher.close()
    return count, round(count / elapsed, 1)


def queue_depth_and_purge(settings, queue, purge=True):
    from ansible_collections.testfleet.infra.plugins.module_utils import amqp
    connection = amqp.connect(settings)
    try:
        channel = connection.channel()
        depth = channel.queue_declare(queue, passive=True).method.message_count
        if purge:
            channel.queue_purge(queue)
        return depth
    finally:
        connection.close()


def delete_topology(settings, topology):
    from ansible_collections.testfleet.infra.plugins.module_utils import amqp
    connection = amqp.connect(settings)
    try:
        channel = connection.channel()
        for queue in topology["queues"]:
            channel.queue_delete(queue["name"])
        for exchange in topology["exchanges"]:
            channel.exchange_delete(exchange["name"])
    finally:
        connection.close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit("bench: the webhook exited with %s" % process.returncode)
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("bench: the webhook at %s did not become healthy" % url)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--url", help="a running webhook's URL (default: start one)")
    parser.add_argument("--secret-file", help="the secret of the webhook at --url")
    parser.add_argument("--amqp-url", default=os.environ.get("TESTFLEET_AMQP_URL", "amqp://127.0.0.1:5672/"))
    parser.add_argument("--password-file", default=os.environ.get("TESTFLEET_AMQP_PASSWORD_FILE"),
                        help="file holding the broker password of --amqp-url's user")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds a level")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--keep-log", help="copy the webhook's log to this file")
    args = parser.parse_args(argv)
    if args.url and not args.secret_file:
        parser.error("--url needs --secret-file")

    import_collection()
    from ansible_collections.testfleet.infra.plugins.module_utils import amqp
    from ansible_collections.testfleet.infra.plugins.module_utils import config
    from ansible_collections.testfleet.infra.plugins.module_utils import topology
    from ansible_collections.testfleet.infra.programs.webhook.server import sign

    deliveries = load_deliveries(FIXTURES, config.DEFAULT_EVENTS)
    if not deliveries:
        raise SystemExit("bench: no fixture deliveries found in %s" % FIXTURES)
    amqp_section = {"url": args.amqp_url}
    if args.password_file:
        amqp_section["password_file"] = os.path.abspath(args.password_file)
    settings = amqp.AmqpSettings(connection_name="bench", **amqp_section)
    run_id = "bench-%s" % uuid.uuid4().hex[:8]
    description = {"exchange": run_id, "dead_letter_exchange": run_id + ".dead-letter",
                   "dead_letter_queue": run_id + ".dead-letter", "queues": [run_id + ".events"]}
    queue = run_id + ".events"
    process, workdir, log_path = None, tempfile.mkdtemp(prefix="testfleet-bench-"), None
    results = {"run": run_id, "fixtures": len(deliveries),
               "fixture_sources": sorted(set(os.path.dirname(os.path.dirname(p))
                                             for dummy, dummy, p in deliveries)),
               "duration_s": args.duration, "cpus": os.cpu_count(),
               "loadavg_1m_before": round(os.getloadavg()[0], 2)}
    try:
        if args.url:
            url = args.url
            secret = config.read_secret_file(args.secret_file)
            results["webhook"] = url
        else:
            secret = uuid.uuid4().hex.encode("ascii")
            secret_file = os.path.join(workdir, "secret")
            with open(os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
                handle.write(secret + b"\n")
            port = free_port()
            with open(os.path.join(workdir, "config.yml"), "w") as handle:
                json.dump({"amqp": amqp_section,
                           "webhook": {"listen": "127.0.0.1:%d" % port, "queue": queue,
                                       "secret_files": [secret_file]},
                           "topology": description}, handle)
            log_path = os.path.join(workdir, "webhook.log")
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, os.path.join(ROOT, "bin", "testfleet-webhook"), "--config",
                     os.path.join(workdir, "config.yml")], stderr=log, stdout=log)
            url = "http://127.0.0.1:%d/webhook" % port
            results["webhook"] = "started (pid %d)" % process.pid
        base = url[:-len(urlsplit(url).path)] if urlsplit(url).path else url
        wait_healthy(base + "/healthz", process)
        requests = Requests(url, deliveries, secret, sign)

        errors, lost = 0, 0
        for level in [int(x) for x in args.levels.split(",")]:
            result = asyncio.run(run_level(requests, level, args.duration, args.warmup))
            errors += sum(v for k, v in result["statuses"].items() if k != "202")
            if process is not None:
                # Every delivery answered "queued" (warm-up included) must be in the queue.
                depth = queue_depth_and_purge(settings, queue)
                result["queue_depth"] = depth
                lost += max(0, result["queued"] + result["warmup_queued"] - depth)
            print(json.dumps(result), flush=True)
            for key in ("per_s", "p50_ms", "p99_ms"):
                results["c%d_%s" % (level, key)] = result[key]

        messages = [json.dumps({"delivery": "x", "event": e, "received_at": "now"}).encode() + body
                    for e, body, dummy in deliveries]
        count, rate = asyncio.run(broker_ceiling(settings, description, queue, messages,
                                                 args.duration))
        results.update(broker_ceiling_per_s=rate, broker_ceiling_messages=count, errors=errors,
                       lost=lost if process is not None else None,
                       loadavg_1m_after=round(os.getloadavg()[0], 2))
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        try:
            delete_topology(settings, topology.expand(description))
        except Exception as exc:  # cleanup only
            print("bench: cleanup failed: %s" % exc, file=sys.stderr)
        if log_path and args.keep_log:
            shutil.copyfile(log_path, args.keep_log)
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
