# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testfleet-webhook: receive GitHub deliveries, verify them, queue them, lose none.

``testfleet-webhook --config FILE`` (the ``webhook`` and ``amqp`` sections and the ``topology``
key of the config file, see :mod:`.config`) serves:

``POST <webhook.path>``
    A GitHub delivery. In this order: another method is 405; a body over
    ``max_body_bytes`` is 413 (also when the client announces it in ``Content-Length``, before
    reading it); a body cut short is 400; a missing or wrong ``X-Hub-Signature-256`` (HMAC-SHA256
    of the raw body with any of the secrets, compared in constant time; ``X-Hub-Signature``
    with SHA-1 only when ``allow_sha1``) is 401; a content type other than ``application/json``
    or ``application/x-www-form-urlencoded`` (whose ``payload`` field holds the JSON) is 415;
    a missing or malformed ``X-GitHub-Event``/``X-GitHub-Delivery`` header or body that is
    not a JSON object is 400. An event or action outside ``webhook.events`` is 202
    ``ignored``. Anything else is published as ``{"delivery", "event", "received_at",
    "payload"}`` (persistent, ``message_id`` = the delivery id, ``type`` = the event) and
    answered 202 ``queued`` only once the broker confirmed it; when it cannot be (broker down,
    blocked, refusing, no confirm in ``publish_timeout``) the answer is 503 with
    ``Retry-After``. GitHub's redeliveries carry the same delivery id and are queued again:
    consumers tell them apart by ``message_id``.
``GET /healthz``
    200 when the broker connection is ready, else 503.
``GET /metrics``
    Prometheus text (:mod:`.metrics`).

Each delivery gives one JSON log line on stderr (delivery, event, action, repo, outcome,
status, reason, durations); never the body, never a secret. SIGTERM/SIGINT stop gracefully
(answers in flight are finished); SIGHUP re-reads the secret files (rotation without restart).

Why aiohttp and pika's asyncio adapter: aiohttp is a mature asyncio HTTP server with a C HTTP
parser, already pinned for the project, and it runs in the same event loop as pika's
``AsyncioConnection``; that lets every request await its own publisher confirm while dozens are
in flight on one channel (see :mod:`.webhook_publisher`), with no extra dependency and with the
connection settings of :mod:`.amqp`, the one place that turns config into a pika connection.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hmac
import json
import logging
import os
import re
import signal
import ssl
import sys
import time
import uuid
from urllib.parse import parse_qs

try:
    import aiohttp
    from aiohttp import web
    HAS_AIOHTTP = True
except ImportError:  # pragma: no cover - depends on the environment
    aiohttp = web = None
    HAS_AIOHTTP = False

from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.module_utils.amqp import AmqpError, HAS_PIKA
from ansible_collections.testfleet.infra.programs.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ansible_collections.testfleet.infra.programs.webhook.metrics import WebhookMetrics
from ansible_collections.testfleet.infra.programs.webhook.publisher import (
    AsyncPublisher, Unavailable)

PROGRAM = "testfleet-webhook"
DELIVERY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
EVENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
FORM = "application/x-www-form-urlencoded"
SHOWN_HEADER_CHARS = 80

log = logging.getLogger("testfleet.webhook")


# logging ------------------------------------------------------------------------------------

def format_line(created, level, logger, message, fields):
    """One log line: a JSON object with time, level, logger, message and ``fields``."""
    line = {
        "time": datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level, "logger": logger, "message": message,
    }
    line.update(fields or {})
    return json.dumps(line, default=str)


class JsonFormatter(logging.Formatter):
    """Formats a record with :func:`format_line`; ``extra={"fields": {...}}`` adds keys."""

    def format(self, record):
        fields = getattr(record, "fields", None)
        if record.exc_info:
            fields = dict(fields or {}, exception=self.formatException(record.exc_info))
        return format_line(record.created, record.levelname.lower(), record.name,
                           record.getMessage(), fields)


_direct_stream = []  # the stream setup_logging() gave the JSON handler, for log_line()


def log_line(level, message, fields, logger=log):
    """``logger.log(level, message, extra={"fields": fields})``, writing the same line straight
    to the stream when setup_logging() configured it: the per-delivery fast path."""
    if not logger.isEnabledFor(level):
        return
    if not _direct_stream:
        logger.log(level, message, extra={"fields": fields})
        return
    stream = _direct_stream[0]
    stream.write(format_line(time.time(), logging.getLevelName(level).lower(), logger.name,
                             message, fields) + "\n")
    stream.flush()


def setup_logging(level="INFO", stream=None):
    """JSON lines on ``stream`` (default stderr): testfleet's records from ``level`` on, other
    libraries' warnings and errors."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("testfleet").setLevel(level)
    # pika reports a failed connection attempt in several ERROR records, again at every retry;
    # the publisher logs one line when the broker's state changes instead.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    _direct_stream[:] = [stream]


# verification -------------------------------------------------------------------------------

def load_secrets(paths):
    """The secrets in ``paths`` (bytes, one a file); ConfigError names an unusable file."""
    return [config_lib.read_secret_file(path, "webhook secret") for path in paths]


def sign(secret, body, algorithm="sha256"):
    """The signature header value GitHub sends for ``body``: ``sha256=<hex>``."""
    return "%s=%s" % (algorithm, hmac.new(secret, body, algorithm).hexdigest())


def signature_valid(secrets, body, header, algorithm="sha256"):
    """Whether ``header`` (``<algorithm>=<hex>``) is the HMAC of ``body`` with one of ``secrets``.

    Every secret is tried and compared with :func:`hmac.compare_digest`, so the time taken
    does not tell which secret or how many characters matched.
    """
    prefix = algorithm + "="
    if not header or not header.startswith(prefix):
        return False
    given = header[len(prefix):].strip().lower().encode("utf-8", "replace")
    valid = False
    for secret in secrets:
        expected = hmac.digest(secret, body, algorithm).hex().encode("ascii")
        valid |= hmac.compare_digest(expected, given)
    return valid


def _shown(value):
    """A header value as it may appear in a log line (bounded; JSON escapes the rest)."""
    if value is None:
        return None
    return value[:SHOWN_HEADER_CHARS]


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class Rejected(Exception):
    """An answer other than 2xx: HTTP ``status``, metric ``reason`` and a text for the sender."""

    def __init__(self, status, reason, text, headers=None):
        self.status = status
        self.reason = reason
        self.text = text
        self.headers = headers
        super().__init__(text)


# the application ----------------------------------------------------------------------------

class Webhook:
    """The HTTP handlers and their state; :meth:`application` builds the aiohttp app."""

    def __init__(self, settings, secrets, publisher, metrics=None):
        self.path = settings["path"]
        self.allow_sha1 = settings["allow_sha1"]
        self.max_body = settings["max_body_bytes"]
        self.events = settings["events"]
        self.retry_after = str(settings["retry_after"])
        self.secrets = list(secrets)
        self.publisher = publisher
        self.metrics = metrics or WebhookMetrics(publisher)

    def application(self):
        # client_max_size: aiohttp refuses (413) to read more than this much of a body.
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", self.path, self.handle_delivery)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/metrics", self.handle_metrics)
        return app

    def event_label(self, event):
        """The metrics label of an event: its name when it is in the filter, else ``other``."""
        return event if event in self.events else "other"

    async def handle_delivery(self, request):
        started = time.perf_counter()
        headers = request.headers
        record = {"delivery": _shown(headers.get("X-GitHub-Delivery")),
                  "event": _shown(headers.get("X-GitHub-Event")),
                  "remote": request.remote}
        try:
            response = await self._deliver(request, record)
        except Rejected as exc:
            outcome = "unavailable" if exc.status == 503 else "rejected"
            record.update(outcome=outcome, reason=exc.reason)
            self.metrics.rejects.inc(exc.reason)
            response = _answer({"outcome": outcome, "reason": exc.reason, "message": exc.text},
                               exc.status, exc.headers)
        outcome = record["outcome"]
        self.metrics.deliveries.inc(self.event_label(record["event"]), outcome)
        record["status"] = response.status
        record["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        log_line(logging.WARNING if outcome == "unavailable" else logging.INFO, "delivery", record)
        return response

    async def _deliver(self, request, record):
        if request.method != "POST":
            raise Rejected(405, "method", "only POST is accepted here", {"Allow": "POST"})
        body = await self._read_body(request)
        self._verify(request.headers, body)
        event, delivery = self._github_headers(request.headers)
        payload_text, raw = self._payload_text(request.content_type, body)
        try:
            payload = DECODER.decode(payload_text)
        except (ValueError, RecursionError) as exc:
            raise Rejected(400, "malformed", "the payload is not valid JSON: %s" % (
                str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"))
        if not isinstance(payload, dict):
            raise Rejected(400, "malformed", "the payload must be a JSON object")
        action = payload.get("action")
        repository = payload.get("repository")
        record["action"] = action if isinstance(action, str) else None
        record["repo"] = repository.get("full_name") if isinstance(repository, dict) else None

        if not self._wanted(event, action):
            record["outcome"] = "ignored"
            return _answer({"outcome": "ignored", "delivery": delivery, "event": event})

        # The payload is spliced in as received (validated above): no second encoding.
        head = json.dumps({"delivery": delivery, "event": event, "received_at": _now()})
        message = b"".join((head[:-1].encode("utf-8"), b', "payload": ', raw, b"}"))
        publish_started = time.perf_counter()
        try:
            await self.publisher.publish(message, message_id=delivery, message_type=event)
        except Unavailable as exc:
            record["error"] = str(exc)
            raise Rejected(503, exc.reason, "the broker did not store the delivery; retry later",
                           {"Retry-After": self.retry_after})
        publish_seconds = time.perf_counter() - publish_started
        self.metrics.publish_seconds.observe(publish_seconds)
        record["publish_ms"] = round(publish_seconds * 1000, 3)
        record["outcome"] = "queued"
        return _answer({"outcome": "queued", "delivery": delivery, "event": event})

    async def _read_body(self, request):
        length = request.content_length
        if length is not None and length > self.max_body:
            raise Rejected(413, "too_large", "the body is larger than %d bytes" % self.max_body)
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Rejected(413, "too_large", "the body is larger than %d bytes" % self.max_body)
        except Exception as exc:  # the client closed early, or a broken chunked encoding
            raise Rejected(400, "incomplete", "the body could not be read completely: %s"
                           % type(exc).__name__)

    def _verify(self, headers, body):
        signature = headers.get("X-Hub-Signature-256")
        if signature is not None:
            valid = signature_valid(self.secrets, body, signature, "sha256")
        elif self.allow_sha1 and headers.get("X-Hub-Signature") is not None:
            valid = signature_valid(self.secrets, body, headers["X-Hub-Signature"], "sha1")
        else:
            raise Rejected(401, "signature", "missing X-Hub-Signature-256")
        if not valid:
            raise Rejected(401, "signature", "the signature does not match")

    @staticmethod
    def _github_headers(headers):
        event = headers.get("X-GitHub-Event")
        delivery = headers.get("X-GitHub-Delivery")
        if not event or not EVENT_RE.match(event):
            raise Rejected(400, "headers", "missing or malformed X-GitHub-Event")
        if not delivery or not DELIVERY_RE.match(delivery):
            raise Rejected(400, "headers", "missing or malformed X-GitHub-Delivery")
        return event, delivery

    @staticmethod
    def _payload_text(content_type, body):
        """The JSON text of the payload (the body, or its ``payload`` form field), as text and
        as UTF-8 bytes."""
        if content_type == "application/json":
            try:
                return body.decode("utf-8"), body
            except UnicodeDecodeError:
                raise Rejected(400, "malformed", "the body is not UTF-8")
        if content_type == FORM:
            try:
                fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                                  errors="strict", max_num_fields=16)
            except (UnicodeDecodeError, ValueError):
                raise Rejected(400, "malformed", "the form body is malformed")
            values = fields.get("payload", [])
            if len(values) != 1:
                raise Rejected(400, "malformed", "the form needs exactly one 'payload' field")
            return values[0], values[0].encode("utf-8")
        raise Rejected(415, "content_type", "the content type must be application/json or %s"
                       % FORM)

    def _wanted(self, event, action):
        if event not in self.events:
            return False
        actions = self.events[event]
        return actions is None or action in actions

    async def handle_healthz(self, request):
        publisher = self.publisher
        if publisher.ready and not publisher.blocked:
            return _answer({"status": "ok", "broker": "connected"}, 200)
        state = "blocked" if publisher.ready else "disconnected"
        return _answer({"status": "unavailable", "broker": state, "error": publisher.last_error},
                       503, {"Retry-After": self.retry_after})

    async def handle_metrics(self, request):
        return web.Response(body=self.metrics.render().encode("utf-8"),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})


def _refuse_constant(name):
    raise ValueError("%s is not JSON" % name)


# Strict JSON (no NaN/Infinity), made once: json.loads with arguments builds a decoder a call.
DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _answer(document, status=202, headers=None):
    return web.Response(status=status, headers=headers, content_type="application/json",
                        body=json.dumps(document).encode("utf-8"))


# the program --------------------------------------------------------------------------------

def tls_context(settings):
    if not settings["tls_cert_file"]:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings["tls_cert_file"], settings["tls_key_file"])
    except (ssl.SSLError, OSError) as exc:
        raise config_lib.ConfigError("webhook.tls_cert_file/tls_key_file: cannot load %s: %s"
                                     % (settings["tls_cert_file"], exc))
    return context


async def serve(config, stop=None, ready=None):
    """Run the webhook of ``config`` until ``stop`` (an asyncio.Event) is set or a signal."""
    settings = config.section("webhook")
    secrets = load_secrets(settings["secret_files"])
    context = tls_context(settings)
    amqp_settings = config.amqp_settings(connection_name=PROGRAM)
    publisher = AsyncPublisher(amqp_settings, config.topology, settings["queue"],
                               timeout=settings["publish_timeout"], app_id=PROGRAM,
                               logger=logging.getLogger("testfleet.webhook.broker"))
    webhook = Webhook(settings, secrets, publisher)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()

    def reload_secrets():
        try:
            webhook.secrets = load_secrets(settings["secret_files"])
        except config_lib.ConfigError as exc:
            log.error("secrets not reloaded, keeping the previous ones", extra={"fields": {
                "error": str(exc)}})
            return
        log.info("secrets reloaded", extra={"fields": {"secrets": len(webhook.secrets)}})

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_secrets)

    await publisher.start(wait=amqp_settings.connect_timeout)
    host, port = config_lib.parse_listen(settings["listen"])
    runner = web.AppRunner(webhook.application(), access_log=None, handle_signals=False,
                           shutdown_timeout=settings["publish_timeout"] + 1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context, backlog=1024,
                           reuse_address=True)
        await site.start()
        bound = runner.addresses[0]
        log.info("listening", extra={"fields": {
            "host": bound[0], "port": bound[1], "path": settings["path"],
            "tls": context is not None, "broker_ready": publisher.ready,
            "queue": settings["queue"], "events": sorted(settings["events"]),
            "secrets": len(secrets), "pid": os.getpid()}})
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
        await publisher.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    return 0


SAMPLE_PAYLOAD = {
    "zen": "Design for failure.",
    "hook_id": 0,
    "hook": {"type": "Repository", "id": 0, "name": "web", "active": True, "events": ["*"],
             "config": {"content_type": "json", "insecure_ssl": "0"}},
    "repository": {"id": 0, "name": "sample", "full_name": "testfleet/sample", "private": False},
    "sender": {"login": "testfleet", "id": 0, "type": "User"},
}


def local_url(settings):
    """The URL of this config's webhook as seen from its own host."""
    host, port = config_lib.parse_listen(settings["listen"])
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host:
        host = "[%s]" % host
    scheme = "https" if settings["tls_cert_file"] else "http"
    return "%s://%s:%d%s" % (scheme, host, port, settings["path"])


async def send_sample(settings, url=None, event="ping", payload_file=None, delivery=None):
    """POST a delivery signed with the config's first secret; return (status, answer dict).

    The answer is what the webhook said; a transport error gives status 0 and its text.
    """
    url = url or local_url(settings)
    if payload_file:
        with open(payload_file, "rb") as handle:
            body = handle.read()
    else:
        body = json.dumps(SAMPLE_PAYLOAD).encode("utf-8")
    secret = load_secrets(settings["secret_files"][:1])[0]
    delivery = delivery or "sample-%s" % uuid.uuid4()
    headers = {"Content-Type": "application/json", "User-Agent": "%s-sample" % PROGRAM,
               "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
               "X-Hub-Signature-256": sign(secret, body)}
    # A self-check from the webhook's own host: its certificate may name another host.
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.post(url, data=body, headers=headers, ssl=False) as answer:
                status, text = answer.status, await answer.read()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return 0, {"url": url, "delivery": delivery, "error": str(exc) or type(exc).__name__}
    try:
        document = json.loads(text)
    except ValueError:
        document = {"text": text.decode("utf-8", "replace")[:500]}
    return status, dict(document, url=url, delivery=delivery, status=status)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Receive GitHub webhook deliveries, verify their signature "
        "and queue them on the broker (answering 2xx only once the broker confirmed).")
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="the testfleet config file (sections amqp and webhook)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and read the secrets, then exit")
    parser.add_argument("--log-level", default="INFO",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sample = parser.add_argument_group(
        "sending a sample", "instead of serving, send one delivery signed with the config's "
        "first secret to the running webhook of this config, print the answer (JSON) and exit "
        "0 when it was queued")
    sample.add_argument("--send-sample", action="store_true", help="send a sample delivery")
    sample.add_argument("--url", help="where to send it (default: from webhook.listen/path)")
    sample.add_argument("--event", default="ping", help="its X-GitHub-Event (default: ping)")
    sample.add_argument("--payload", metavar="FILE", help="its body (default: a small ping)")
    sample.add_argument("--delivery", help="its X-GitHub-Delivery (default: sample-<uuid>)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.check or args.send_sample):
        # Until the handler that re-reads the secrets is in place, a SIGHUP (a reload sent
        # while the program starts) must not end it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging(args.log_level)
    missing = [name for name, present in (("aiohttp", HAS_AIOHTTP), ("pika", HAS_PIKA),
                                          ("PyYAML", config_lib.HAS_YAML)) if not present]
    if missing:
        log.error("missing Python libraries", extra={"fields": {"missing": missing}})
        return 2
    try:
        config = config_lib.load(args.config)
        settings = config.section("webhook")
        load_secrets(settings["secret_files"])
        config.amqp_settings().validate()
        tls_context(settings)
    except (config_lib.ConfigError, AmqpError) as exc:
        log.error("invalid configuration", extra={"fields": {"error": str(exc)}})
        return 2
    if args.check:
        log.info("configuration valid", extra={"fields": {"config": args.config}})
        return 0
    if args.send_sample:
        status, answer = asyncio.run(send_sample(settings, args.url, args.event, args.payload,
                                                 args.delivery))
        sys.stdout.write(json.dumps(answer) + "\n")
        return 0 if status == 202 and answer.get("outcome") == "queued" else 1
    try:
        return asyncio.run(serve(config))
    except OSError as exc:  # e.g. the address is in use
        log.error("cannot serve", extra={"fields": {"error": str(exc)}})
        return 1
