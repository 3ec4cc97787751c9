"""testfleet-webhook end to end: real HTTP in, the real broker's queue out."""

import datetime
import json
import socket
import ssl
import subprocess
import urllib.parse
import urllib.request

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.topology import expand

SMALL = json.dumps({"zen": "Anything added dilutes everything else.", "hook_id": 1,
                    "repository": {"full_name": "octo/widget"}}).encode()


def assert_message(properties, message, delivery_id, event, payload):
    assert properties.message_id == delivery_id
    assert properties.delivery_mode == 2  # persistent
    assert properties.content_type == "application/json"
    assert properties.type == event
    assert set(message) == {"delivery", "event", "received_at", "payload"}
    assert (message["delivery"], message["event"], message["payload"]) == (delivery_id, event, payload)
    received = datetime.datetime.fromisoformat(message["received_at"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - received).total_seconds()) < 600


def test_every_fixture_delivery_is_queued_exactly_once(webhook, deliveries):
    sent = {}
    for index, delivery in enumerate(deliveries):
        delivery_id = "fixture-%03d" % index
        answer = webhook.post(delivery.event, delivery.body, delivery=delivery_id)
        assert answer.status == 202, (delivery, answer)
        assert answer.json["outcome"] == ("queued" if delivery.queued else "ignored"), delivery
        if delivery.queued:
            sent[delivery_id] = delivery

    taken = webhook.amqp_queue.drain()
    assert sorted(p.message_id for p, m in taken) == sorted(sent)  # each once, nothing else
    for properties, message in taken:
        delivery = sent[properties.message_id]
        assert_message(properties, message, properties.message_id, delivery.event, delivery.payload)


def test_form_encoded_deliveries_are_queued_with_the_same_payload(webhook, deliveries):
    queued = [d for d in deliveries if d.queued][:4]
    for index, delivery in enumerate(queued):
        body = urllib.parse.urlencode({"payload": delivery.body.decode()}).encode()
        answer = webhook.post(delivery.event, body, delivery="form-%d" % index,
                              content_type="application/x-www-form-urlencoded")
        assert (answer.status, answer.json["outcome"]) == (202, "queued"), answer
    taken = webhook.amqp_queue.drain()
    assert [p.message_id for p, m in taken] == ["form-%d" % i for i in range(len(queued))]
    for (properties, message), delivery in zip(taken, queued):
        assert_message(properties, message, properties.message_id, delivery.event, delivery.payload)


def test_bad_signatures_are_401_and_nothing_is_queued(webhook):
    good = webhook.headers("ping", SMALL)["X-Hub-Signature-256"]
    cases = {
        "missing": {"X-Hub-Signature-256": None},
        "wrong secret": {"X-Hub-Signature-256": webhook.headers("ping", SMALL, secret=b"other")["X-Hub-Signature-256"]},
        "one digit off": {"X-Hub-Signature-256": good[:-1] + ("0" if good[-1] != "0" else "1")},
        "no prefix": {"X-Hub-Signature-256": good[len("sha256="):]},
        "sha1 prefix": {"X-Hub-Signature-256": "sha1=" + good[len("sha256="):]},
        "empty": {"X-Hub-Signature-256": ""},
        "not ascii": {"X-Hub-Signature-256": "sha256=" + "\u00e9" * 64},
    }
    for name, override in cases.items():
        answer = webhook.post("ping", SMALL, **override)
        assert answer.status == 401, (name, answer)
        assert answer.json["reason"] == "signature"
    # The body changed after signing (a truncated body, signed in full).
    headers = webhook.headers("ping", SMALL)
    answer = webhook.request("POST", "/webhook", SMALL[:-5], headers)
    assert answer.status == 401, answer
    # SHA-1 is not accepted unless allowed.
    sha1 = {"X-Hub-Signature-256": None, "X-Hub-Signature": sign_sha1(webhook.secrets[0], SMALL)}
    assert webhook.post("ping", SMALL, **sha1).status == 401
    assert webhook.amqp_queue.drain() == []


def sign_sha1(secret, body):
    from ansible_collections.testfleet.infra.programs.webhook.server import sign
    return sign(secret, body, "sha1")


def test_every_configured_secret_is_accepted_for_rotation(webhook):
    for index, secret in enumerate(webhook.secrets):
        answer = webhook.post("ping", SMALL, delivery="rotation-%d" % index, secret=secret)
        assert (answer.status, answer.json["outcome"]) == (202, "queued")
    assert [p.message_id for p, m in webhook.amqp_queue.drain()] == ["rotation-0", "rotation-1"]


def test_sha1_signatures_only_when_allowed(start_webhook):
    webhook = start_webhook(allow_sha1=True)
    headers = {"X-Hub-Signature-256": None, "X-Hub-Signature": sign_sha1(webhook.secrets[1], SMALL)}
    answer = webhook.post("ping", SMALL, delivery="sha1-ok", **headers)
    assert (answer.status, answer.json["outcome"]) == (202, "queued"), answer
    headers["X-Hub-Signature"] = sign_sha1(b"wrong", SMALL)
    assert webhook.post("ping", SMALL, delivery="sha1-bad", **headers).status == 401
    # With both headers, the SHA-256 one decides.
    headers = {"X-Hub-Signature": sign_sha1(webhook.secrets[0], SMALL), "X-Hub-Signature-256": "sha256=00"}
    assert webhook.post("ping", SMALL, delivery="both", **headers).status == 401
    assert [p.message_id for p, m in webhook.amqp_queue.drain()] == ["sha1-ok"]


def test_content_types_methods_and_headers(webhook):
    form = urllib.parse.urlencode({"other": "1"}).encode()
    cases = [
        (dict(content_type="text/plain"), SMALL, 415, "content_type"),
        (dict(content_type="application/xml"), b"<ping/>", 415, "content_type"),
        (dict(content_type="application/x-www-form-urlencoded"), form, 400, "malformed"),
        (dict(content_type="application/x-www-form-urlencoded"), b"payload=%7B&payload=%7D", 400, "malformed"),
        (dict(), b'{"zen": "truncated', 400, "malformed"),
        (dict(), b"[1, 2]", 400, "malformed"),
        (dict(), b'{"n": NaN}', 400, "malformed"),
        (dict(), b"\xff\xfe{}", 400, "malformed"),
        (dict(), b"", 400, "malformed"),
        ({"X-GitHub-Event": None}, SMALL, 400, "headers"),
        ({"X-GitHub-Delivery": None}, SMALL, 400, "headers"),
        ({"X-GitHub-Event": "Ping Pong"}, SMALL, 400, "headers"),
        ({"X-GitHub-Delivery": "a/../b"}, SMALL, 400, "headers"),
    ]
    for overrides, body, status, reason in cases:
        answer = webhook.post("ping", body, **overrides)
        assert (answer.status, answer.json["reason"]) == (status, reason), (overrides, body, answer)
    untyped = raw_request(webhook, SMALL, webhook.headers("ping", SMALL, content_type=None))
    assert untyped.startswith(b"HTTP/1.1 415"), untyped
    # JSON with a charset parameter is fine.
    answer = webhook.post("ping", SMALL, delivery="charset", content_type="application/json; charset=utf-8")
    assert answer.status == 202, answer
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        answer = webhook.request(method, "/webhook", b"{}" if method != "GET" else None)
        assert answer.status == 405 and answer.headers["Allow"] == "POST", (method, answer)
    assert webhook.get("/nowhere").status == 404
    assert [p.message_id for p, m in webhook.amqp_queue.drain()] == ["charset"]


def test_unknown_events_and_actions_are_ignored(webhook):
    labeled = json.dumps({"action": "unlabeled", "number": 1}).encode()
    for event, body in (("check_suite", SMALL), ("deployment", SMALL), ("pull_request", labeled),
                        ("issue_comment", json.dumps({"action": "deleted"}).encode()),
                        ("pull_request", SMALL)):  # an action list and no action: ignored
        answer = webhook.post(event, body)
        assert (answer.status, answer.json["outcome"]) == (202, "ignored"), (event, answer)
    assert webhook.amqp_queue.drain() == []


def test_configured_event_filter(start_webhook):
    webhook = start_webhook(events={"check_suite": ["completed"], "ping": None})
    assert webhook.post("check_suite", json.dumps({"action": "completed"}).encode(),
                        delivery="suite").json["outcome"] == "queued"
    assert webhook.post("check_suite", json.dumps({"action": "requested"}).encode()).json["outcome"] == "ignored"
    assert webhook.post("push", SMALL).json["outcome"] == "ignored"
    assert [p.message_id for p, m in webhook.amqp_queue.drain()] == ["suite"]


def test_oversized_bodies_are_413(start_webhook):
    webhook = start_webhook(max_body_bytes=100000)
    body = json.dumps({"zen": "x" * 100001}).encode()
    answer = webhook.post("ping", body)
    assert (answer.status, answer.json["reason"]) == (413, "too_large"), answer
    # Without Content-Length (chunked), the limit holds while reading.
    chunked = raw_request(webhook, body, webhook.headers("ping", body), chunked=True)
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    just_fits = json.dumps({"zen": "x" * (100000 - 11)}).encode()
    assert len(just_fits) == 100000
    assert webhook.post("ping", just_fits, delivery="fits").status == 202
    assert [p.message_id for p, m in webhook.amqp_queue.drain()] == ["fits"]


def test_default_limit_is_25_mib(webhook):
    body = b'{"zen": "' + b"x" * (25 * 1024 * 1024) + b'"}'
    answer = webhook.post("ping", body)
    assert answer.status == 413, answer
    assert webhook.amqp_queue.drain() == []


def raw_request(webhook, body, headers, chunked=False, send=None, shutdown=False):
    """Send a hand-made HTTP/1.1 request; return all the bytes answered (until EOF or 10 s)."""
    headers = dict(headers)
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192])
                           for i in range(0, len(body), 8192)) + b"0\r\n\r\n"
    else:
        headers["Content-Length"] = str(len(body))
        payload = body
    headers["Connection"] = "close"
    head = "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        "%s: %s\r\n" % item for item in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as sock:
        sock.sendall(head.encode() + (payload if send is None else payload[:send]))
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return answer


def test_a_body_cut_short_is_not_queued(webhook):
    headers = webhook.headers("ping", SMALL, delivery="cut-short")
    answer = raw_request(webhook, SMALL, headers, send=len(SMALL) // 2, shutdown=True)
    # The client is gone for writing: an answer is a 400, or the connection just closes.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer
    assert webhook.get("/healthz").status == 200  # still serving
    assert webhook.amqp_queue.drain() == []
    webhook.stop()
    lines = [line for line in webhook.log_lines() if line.get("delivery") == "cut-short"]
    assert [(line["outcome"], line["reason"]) for line in lines] == [("rejected", "incomplete")]


def test_repeated_delivery_ids_are_queued_again_with_the_same_message_id(webhook):
    for dummy in range(2):
        answer = webhook.post("ping", SMALL, delivery="redelivered-1")
        assert (answer.status, answer.json["outcome"]) == (202, "queued")
    taken = webhook.amqp_queue.drain()
    assert [p.message_id for p, m in taken] == ["redelivered-1", "redelivered-1"]
    assert taken[0][1]["payload"] == taken[1][1]["payload"]


def test_health_metrics_and_one_log_line_per_delivery(webhook):
    assert webhook.get("/healthz").json == {"status": "ok", "broker": "connected"}
    marker = "body-marker-%s" % webhook.port
    body = json.dumps({"action": "opened", "marker": marker, "repository": {"full_name": "octo/widget"}}).encode()
    assert webhook.post("pull_request", body, delivery="log-1").status == 202
    assert webhook.post("pull_request", body, delivery="log-2", secret=b"bad").status == 401
    assert webhook.post("watch", body, delivery="log-3").status == 202
    metrics = webhook.get("/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = metrics.body.decode()
    for line in ('testfleet_webhook_deliveries_total{event="pull_request",outcome="queued"} 1',
                 'testfleet_webhook_deliveries_total{event="pull_request",outcome="rejected"} 1',
                 'testfleet_webhook_deliveries_total{event="other",outcome="ignored"} 1',
                 'testfleet_webhook_rejects_total{reason="signature"} 1',
                 'testfleet_webhook_publish_seconds_count 1',
                 'testfleet_webhook_broker_up 1'):
        assert line in text.splitlines(), line
    webhook.stop()
    lines = [line for line in webhook.log_lines() if line.get("message") == "delivery"]
    assert [(line["delivery"], line["event"], line["outcome"], line["status"]) for line in lines] == [
        ("log-1", "pull_request", "queued", 202), ("log-2", "pull_request", "rejected", 401),
        ("log-3", "watch", "ignored", 202)]
    assert lines[0]["repo"] == "octo/widget" and lines[0]["action"] == "opened"
    assert all(isinstance(line["duration_ms"], float) for line in lines)
    log_text = webhook.log.read_text()
    assert marker not in log_text
    assert not any(secret.decode() in log_text for secret in webhook.secrets)


def test_it_declares_its_queue_with_the_topology_arguments(webhook, broker):
    expanded = expand(webhook.description)
    for queue in expanded["queues"]:  # a re-declare with other arguments would fail (406)
        broker.channel().queue_declare(queue["name"], durable=True, arguments=queue["arguments"], passive=False)
    channel = broker.channel()
    with pytest.raises(amqp.pika.exceptions.ChannelClosedByBroker) as raised:
        channel.queue_declare(webhook.queue, durable=True, arguments={"x-queue-type": "classic"})
    assert raised.value.reply_code == 406


def test_it_starts_without_a_broker_and_answers_503(start_webhook):
    webhook = start_webhook(wait=False, amqp_url="amqp://guest:guest@127.0.0.1:%d/" % unused_port())
    webhook.wait_ready(healthy=False)
    health = webhook.get("/healthz")
    assert health.status == 503 and health.json["broker"] == "disconnected"
    answer = webhook.post("ping", SMALL)
    assert answer.status == 503 and int(answer.headers["Retry-After"]) > 0, answer
    assert answer.json["outcome"] == "unavailable"


def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_https_with_a_certificate_given_to_the_program_and_the_sample_sender(start_webhook, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    webhook = start_webhook(wait=False, tls_cert_file=str(cert), tls_key_file=str(key))
    webhook.base = webhook.base.replace("http:", "https:")
    webhook.url = webhook.url.replace("http:", "https:")
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    urllib.request.install_opener(opener)
    try:
        webhook.wait_ready()
        assert webhook.post("ping", SMALL, delivery="over-tls").status == 202
    finally:
        urllib.request.install_opener(None)
    sent = webhook.run_program("--send-sample", "--delivery", "sample-1")
    assert sent.returncode == 0, (sent.stdout, sent.stderr)
    answer = json.loads(sent.stdout)
    assert (answer["outcome"], answer["status"], answer["url"]) == ("queued", 202, webhook.url)
    taken = webhook.amqp_queue.drain()
    assert [p.message_id for p, m in taken] == ["over-tls", "sample-1"]
    assert taken[1][1]["payload"]["repository"]["full_name"] == "testfleet/sample"
