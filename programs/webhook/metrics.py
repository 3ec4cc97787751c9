# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The webhook's Prometheus metrics, rendered in the text exposition format (version 0.0.4).

A few counters and one histogram do not justify a dependency: this module keeps them in dicts
and renders them for ``GET /metrics``. Label values are bounded by the callers (event names
outside the configured filter are counted as ``other``), so a sender cannot grow the series
without bounds.
"""

from __future__ import annotations

import bisect

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "testfleet_webhook_"
# Publish latency buckets (seconds): a confirmed persistent publish takes about a millisecond
# when idle and tens of milliseconds under load.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names, values):
    if not names:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (n, _escape(v)) for n, v in zip(names, values))


def _number(value):
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e15 else str(int(value))
    return str(value)


class Counter:
    def __init__(self, name, help_text, labels=()):
        self.name = PREFIX + name
        self.help = help_text
        self.labels = tuple(labels)
        self.values = {}

    def inc(self, *label_values, amount=1):
        self.values[label_values] = self.values.get(label_values, 0) + amount

    def get(self, *label_values):
        return self.values.get(label_values, 0)

    def render(self):
        lines = ["# HELP %s %s" % (self.name, self.help), "# TYPE %s counter" % self.name]
        for key in sorted(self.values):
            lines.append("%s%s %s" % (self.name, _labels(self.labels, key), _number(self.values[key])))
        return lines


def read_metric(name, help_text, value, kind="gauge"):
    """The lines of a metric whose value is read when rendering (a gauge, or a counter kept
    elsewhere)."""
    name = PREFIX + name
    return ["# HELP %s %s" % (name, help_text), "# TYPE %s %s" % (name, kind),
            "%s %s" % (name, _number(value))]


class Histogram:
    def __init__(self, name, help_text, buckets=LATENCY_BUCKETS):
        self.name = PREFIX + name
        self.help = help_text
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self):
        return sum(self.counts)

    def render(self):
        lines = ["# HELP %s %s" % (self.name, self.help), "# TYPE %s histogram" % self.name]
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts):
            cumulative += count
            lines.append('%s_bucket{le="%s"} %d' % (self.name, _number(bound), cumulative))
        cumulative += self.counts[-1]
        lines.append('%s_bucket{le="+Inf"} %d' % (self.name, cumulative))
        lines.append("%s_sum %s" % (self.name, repr(self.sum)))
        lines.append("%s_count %d" % (self.name, cumulative))
        return lines


class WebhookMetrics:
    """Everything ``GET /metrics`` shows. ``publisher`` gives the broker gauges."""

    def __init__(self, publisher=None):
        self.deliveries = Counter(
            "deliveries_total", "Deliveries by GitHub event and outcome (queued, ignored, "
            "rejected, unavailable).", ("event", "outcome"))
        self.rejects = Counter(
            "rejects_total", "Rejected requests by reason.", ("reason",))
        self.publish_seconds = Histogram(
            "publish_seconds", "Time from publishing a delivery to the broker's confirm.")
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
        return "\n".join(lines) + "\n"
