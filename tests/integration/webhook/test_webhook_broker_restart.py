"""The broker stops mid-run: 503s with Retry-After, then recovery without restarting the webhook,
and nothing answered 2xx is lost."""

import json
import threading
import time

import pytest


@pytest.mark.broker_restart
def test_broker_restart_mid_run(webhook, restart_broker):
    answers = []  # (delivery id, status, outcome, Retry-After)
    stop = threading.Event()

    def send():
        number = 0
        while not stop.is_set():
            number += 1
            delivery = "restart-%05d" % number
            body = json.dumps({"zen": "n%d" % number}).encode()
            try:
                answer = webhook.post("ping", body, delivery=delivery)
            except OSError as exc:  # a dropped connection: never acceptable
                answers.append((delivery, "error: %s" % exc, None, None))
                continue
            answers.append((delivery, answer.status, answer.json.get("outcome"),
                            answer.headers.get("Retry-After")))
            time.sleep(0.01)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        time.sleep(1)
        restart_broker()
        # Recovery without a restart: queued answers again within a few seconds.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (answers and answers[-1][1] == 202):
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        sender.join(60)

    statuses = [a[1] for a in answers]
    assert set(statuses) <= {202, 503}, [a for a in answers if a[1] not in (202, 503)][:5]
    assert 503 in statuses, "the broker was down but nothing was answered 503"
    first_503 = statuses.index(503)
    assert 202 in statuses[:first_503] and 202 in statuses[first_503:], "no recovery"
    assert all(a[3] and int(a[3]) > 0 for a in answers if a[1] == 503)
    assert webhook.process.poll() is None  # the same process all along
    assert webhook.get("/healthz").status == 200

    queued = {a[0] for a in answers if a[1] == 202}
    taken = {p.message_id for p, m in webhook.amqp_queue.drain()}
    assert queued <= taken, "answered 2xx but lost: %s" % sorted(queued - taken)[:10]
    metrics = webhook.get("/metrics").body.decode()
    assert "testfleet_webhook_broker_connections_total 2" in metrics.splitlines() or \
        "testfleet_webhook_broker_connections_total 3" in metrics.splitlines()
