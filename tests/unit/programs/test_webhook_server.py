"""The webhook's HTTP handling in-process, with a fake publisher (no broker)."""

import asyncio
import io
import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.programs.webhook import server as webhook_server
from ansible_collections.testfleet.infra.programs.webhook.metrics import WebhookMetrics
from ansible_collections.testfleet.infra.programs.webhook.publisher import Unavailable
from ansible_collections.testfleet.infra.programs.webhook.server import (
    JsonFormatter, Webhook, sign, signature_valid)

SECRETS = [b"first-secret", b"second-secret"]
BODY = json.dumps({"action": "opened", "number": 7, "repository": {"full_name": "octo/widget"}}).encode()


class FakePublisher:
    def __init__(self, error=None):
        self.published = []
        self.error = error
        self.ready = True
        self.blocked = False
        self.in_flight = 0
        self.connections = 1
        self.last_error = "none"

    async def publish(self, body, message_id=None, message_type=None):
        if self.error:
            raise self.error
        self.published.append((json.loads(body), message_id, message_type))


def settings(**keys):
    return config_lib.validate({"webhook": dict({"secret_files": ["/x"]}, **keys)}).section("webhook")


def run(webhook, *requests):
    """Send ``requests`` ((method, path, body, headers) tuples); return (status, json, headers) answers."""
    async def go():
        client = TestClient(TestServer(webhook.application()))
        await client.start_server()
        answers = []
        try:
            for method, path, body, headers in requests:
                async with client.request(method, path, data=body, headers=headers) as answer:
                    text = await answer.text()
                    try:
                        document = json.loads(text)
                    except ValueError:
                        document = text
                    answers.append((answer.status, document, answer.headers))
        finally:
            await client.close()
        return answers
    return asyncio.run(go())


def headers(body=BODY, event="pull_request", delivery="d-1", secret=SECRETS[0], **extra):
    result = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
              "X-Hub-Signature-256": sign(secret, body)}
    for name, value in extra.items():
        name = name.replace("_", "-")
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def make(publisher=None, **keys):
    return Webhook(settings(**keys), SECRETS, publisher or FakePublisher())


def test_signature_valid():
    assert signature_valid(SECRETS, BODY, sign(SECRETS[1], BODY))
    assert signature_valid(SECRETS, BODY, sign(SECRETS[0], BODY).upper().replace("SHA256=", "sha256="))
    assert not signature_valid(SECRETS, BODY, sign(b"other", BODY))
    assert not signature_valid(SECRETS, BODY + b" ", sign(SECRETS[0], BODY))
    assert not signature_valid(SECRETS, BODY, sign(SECRETS[0], BODY, "sha1"))
    assert signature_valid(SECRETS, BODY, sign(SECRETS[0], BODY, "sha1"), "sha1")
    assert not signature_valid(SECRETS, BODY, "sha256=" + "\u00e9" * 64)
    assert not signature_valid(SECRETS, BODY, None)
    assert not signature_valid([], BODY, sign(SECRETS[0], BODY))


def test_a_delivery_is_published_as_received_with_its_envelope():
    publisher = FakePublisher()
    [(status, answer, dummy)] = run(make(publisher), ("POST", "/webhook", BODY, headers()))
    assert (status, answer) == (202, {"outcome": "queued", "delivery": "d-1", "event": "pull_request"})
    [(message, message_id, message_type)] = publisher.published
    assert (message_id, message_type) == ("d-1", "pull_request")
    assert message["payload"] == json.loads(BODY)
    assert (message["delivery"], message["event"]) == ("d-1", "pull_request")
    assert message["received_at"].endswith("Z")


def test_checks_in_order():
    big = b"x" * 2000
    webhook = make(max_body_bytes=1000)
    cases = [
        # another method wins over everything
        (("GET", "/webhook", None, {}), 405, "method"),
        # too large wins over a bad signature
        (("POST", "/webhook", big, headers(body=b"", X_Hub_Signature_256="sha256=0")), 413, "too_large"),
        # a bad signature wins over a bad content type and missing headers
        (("POST", "/webhook", BODY, headers(Content_Type="text/plain", X_GitHub_Event=None,
                                            X_Hub_Signature_256=sign(b"bad", BODY))), 401, "signature"),
        (("POST", "/webhook", BODY, headers(X_Hub_Signature_256=None)), 401, "signature"),
        (("POST", "/webhook", BODY, headers(Content_Type="text/plain")), 415, "content_type"),
        (("POST", "/webhook", BODY, headers(X_GitHub_Delivery=None)), 400, "headers"),
        (("POST", "/webhook", b"{", headers(body=b"{")), 400, "malformed"),
        (("POST", "/webhook", b'"text"', headers(body=b'"text"')), 400, "malformed"),
        (("POST", "/webhook", b"[" * 100000 + b"]" * 100000, headers(body=b"[" * 100000 + b"]" * 100000)), 413, "too_large"),
    ]
    answers = run(webhook, *(case[0] for case in cases))
    for (request, status, reason), (got_status, answer, got_headers) in zip(cases, answers):
        assert (got_status, answer["reason"]) == (status, reason), request[:2]
    assert answers[0][2]["Allow"] == "POST"
    assert webhook.publisher.published == []
    assert webhook.metrics.rejects.get("signature") == 2


def test_deeply_nested_json_is_400_not_a_crash():
    nested = b"[" * 200000 + b"]" * 200000
    [(status, answer, dummy)] = run(make(), ("POST", "/webhook", nested, headers(body=nested)))
    assert (status, answer["reason"]) == (400, "malformed")


def test_form_encoded_payload():
    from urllib.parse import urlencode
    publisher = FakePublisher()
    body = urlencode({"payload": BODY.decode()}).encode()
    [(status, answer, dummy)] = run(make(publisher), (
        "POST", "/webhook", body, headers(body=body, Content_Type="application/x-www-form-urlencoded")))
    assert status == 202
    assert publisher.published[0][0]["payload"] == json.loads(BODY)


def test_sha1_only_when_allowed():
    sha1 = headers(X_Hub_Signature_256=None, X_Hub_Signature=sign(SECRETS[1], BODY, "sha1"))
    assert run(make(), ("POST", "/webhook", BODY, sha1))[0][0] == 401
    assert run(make(allow_sha1=True), ("POST", "/webhook", BODY, sha1))[0][0] == 202


@pytest.mark.parametrize("error", [
    Unavailable("broker_down", "no broker connection"), Unavailable("nack", "refused"),
    Unavailable("timeout", "no confirm"), Unavailable("unroutable", "returned")])
def test_the_broker_not_confirming_is_503_with_retry_after(error):
    webhook = make(FakePublisher(error), retry_after=17)
    [(status, answer, got_headers)] = run(webhook, ("POST", "/webhook", BODY, headers()))
    assert (status, answer["outcome"], answer["reason"]) == (503, "unavailable", error.reason)
    assert got_headers["Retry-After"] == "17"
    assert webhook.metrics.deliveries.get("pull_request", "unavailable") == 1


def test_health():
    publisher = FakePublisher()
    webhook = make(publisher)
    assert run(webhook, ("GET", "/healthz", None, {}))[0][:2] == (200, {"status": "ok", "broker": "connected"})
    publisher.blocked = True
    assert run(webhook, ("GET", "/healthz", None, {}))[0][1]["broker"] == "blocked"
    publisher.ready = False
    status, answer, dummy = run(webhook, ("GET", "/healthz", None, {}))[0]
    assert (status, answer["broker"]) == (503, "disconnected")


def test_metrics_labels_are_bounded():
    webhook = make()
    events = ["ping", "Weird/Event", "x" * 500, "check_run"]
    run(webhook, *(("POST", "/webhook", BODY, headers(event=e)) for e in events))
    labels = {key[0] for key in webhook.metrics.deliveries.values}
    assert labels == {"ping", "other"}


def test_metrics_text():
    metrics = WebhookMetrics(FakePublisher())
    metrics.deliveries.inc("push", "queued")
    metrics.deliveries.inc("push", "queued")
    metrics.rejects.inc('we"ird')
    for value in (0.0005, 0.003, 0.2, 50):
        metrics.publish_seconds.observe(value)
    lines = metrics.render().splitlines()
    assert 'testfleet_webhook_deliveries_total{event="push",outcome="queued"} 2' in lines
    assert 'testfleet_webhook_rejects_total{reason="we\\"ird"} 1' in lines
    assert 'testfleet_webhook_publish_seconds_bucket{le="0.001"} 1' in lines
    assert 'testfleet_webhook_publish_seconds_bucket{le="0.005"} 2' in lines
    assert 'testfleet_webhook_publish_seconds_bucket{le="0.25"} 3' in lines
    assert 'testfleet_webhook_publish_seconds_bucket{le="10"} 3' in lines
    assert 'testfleet_webhook_publish_seconds_bucket{le="+Inf"} 4' in lines
    assert 'testfleet_webhook_publish_seconds_count 4' in lines
    assert "# TYPE testfleet_webhook_publish_seconds histogram" in lines
    assert "testfleet_webhook_broker_up 1" in lines


def test_json_log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("testfleet.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning("delivery", extra={"fields": {"delivery": "d\n1", "outcome": "queued"}})
    line = json.loads(stream.getvalue())
    assert (line["message"], line["level"], line["delivery"], line["outcome"]) == ("delivery", "warning", "d\n1", "queued")
    assert line["time"].endswith("Z")
    assert stream.getvalue().count("\n") == 1


@pytest.fixture
def restore_logging():
    """main() configures logging for the process: put pytest's back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("testfleet").level, logging.getLogger("pika").level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("testfleet").setLevel(saved[2])
    logging.getLogger("pika").setLevel(saved[3])
    webhook_server._direct_stream[:] = []


def test_main_check_and_config_errors(tmp_path, capsys, restore_logging):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    good = tmp_path / "good.yml"
    good.write_text("webhook:\n  secret_files: [secret]\n")
    assert webhook_server.main(["--config", str(good), "--check"]) == 0
    bad = tmp_path / "bad.yml"
    bad.write_text("webhook:\n  secret_files: [secret]\n  listen: nowhere\n")
    assert webhook_server.main(["--config", str(bad), "--check"]) == 2
    missing = tmp_path / "missing-secret.yml"
    missing.write_text("webhook:\n  secret_files: [nope]\n")
    assert webhook_server.main(["--config", str(missing), "--check"]) == 2
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "configuration valid"
    assert "bad.yml: webhook.listen must be 'host:port'" in lines[1]["error"]
    assert "cannot read the webhook secret file %s" % (tmp_path / "nope") in lines[2]["error"]
    assert "s3cret" not in json.dumps(lines)
