# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The webhook's Prometheus metrics, served on ``GET /metrics``.

The series are kept and rendered by :mod:`..prometheus` (the text format of every program).
Label values are bounded by the callers (event names outside the configured filter are counted
as ``other``), so a sender cannot grow the series without bounds.
"""

from __future__ import annotations

from ansible_collections.testfleet.infra.programs import prometheus

PREFIX = "testfleet_webhook_"
# Publish latency buckets (seconds): a confirmed persistent publish takes about a millisecond
# when idle and tens of milliseconds under load.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def read_metric(name, help_text, value, kind="gauge"):
    """The lines of a metric whose value is read when rendering (a gauge, or a counter kept
    elsewhere)."""
    return prometheus.family(PREFIX + name, kind, help_text, [((), value)])


class WebhookMetrics:
    """Everything ``GET /metrics`` shows. ``publisher`` gives the broker gauges."""

    def __init__(self, publisher=None):
        self.deliveries = prometheus.Counter(
            PREFIX + "deliveries_total", "Deliveries by GitHub event and outcome (queued, "
            "ignored, rejected, unavailable).", ("event", "outcome"))
        self.rejects = prometheus.Counter(
            PREFIX + "rejects_total", "Rejected requests by reason.", ("reason",))
        self.publish_seconds = prometheus.Histogram(
            PREFIX + "publish_seconds", "Time from publishing a delivery to the broker's confirm.",
            LATENCY_BUCKETS)
        self.publisher = publisher

    def render(self):
        lines = self.deliveries.render() + self.rejects.render() + self.publish_seconds.render()
        publisher = self.publisher
        if publisher is not None:
            lines += read_metric("broker_up", "1 when the broker connection is open and ready.",
                                 int(publisher.ready))
            lines += read_metric("broker_blocked", "1 while the broker blocks publishers "
                                 "(resource alarm).", int(publisher.blocked))
            lines += read_metric("publishes_in_flight", "Publishes waiting for the broker's "
                                 "confirm.", publisher.in_flight)
            lines += read_metric("broker_connections_total", "Broker connections opened since "
                                 "the start (more than one: reconnects).", publisher.connections,
                                 kind="counter")
        return prometheus.text(lines)
