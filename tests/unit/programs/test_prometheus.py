"""programs/prometheus.py: the one text renderer; the webhook's and the worker's metrics pass
``promtool check metrics`` (Debian's prometheus, which scripts/bootstrap --for-tests installs)."""

import shutil
import subprocess

import pytest

from ansible_collections.testfleet.infra.programs import prometheus
from ansible_collections.testfleet.infra.programs.webhook.metrics import WebhookMetrics
from ansible_collections.testfleet.infra.programs.worker.metrics import Metrics


@pytest.mark.parametrize("value,text", [
    (0, "0"), (3, "3"), (True, "1"), (2.0, "2"), (0.25, "0.25"), (1e-05, "1e-05"), (4012.5, "4012.5"),
    (1e15, "1000000000000000.0"), (1e16, "1e+16"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"), (float("nan"), "NaN"),
])
def test_numbers(value, text):
    assert prometheus.number(value) == text


def test_labels_and_help_are_escaped():
    assert prometheus.labels([]) == ""
    assert prometheus.labels([("a", 'x"y'), ("b", "back\\slash"), ("c", "two\nlines")]) == \
        '{a="x\\"y",b="back\\\\slash",c="two\\nlines"}'
    assert prometheus.family("m", "gauge", 'help "quoted" \\ and\nmore', [((), 1)]) == [
        '# HELP m help "quoted" \\\\ and\\nmore', "# TYPE m gauge", "m 1"]


def test_counter_series_are_sorted_and_take_constant_labels():
    counter = prometheus.Counter("jobs_total", "Jobs.", ("kind", "outcome"))
    counter.inc("test", "success")
    counter.inc("scan", "failure", amount=2)
    counter.inc("test", "success")
    assert counter.get("test", "success") == 2 and counter.get("nope", "x") == 0
    assert counter.render((("host", "h"),)) == [
        "# HELP jobs_total Jobs.", "# TYPE jobs_total counter",
        'jobs_total{host="h",kind="scan",outcome="failure"} 2',
        'jobs_total{host="h",kind="test",outcome="success"} 2']


def test_histogram_buckets_are_cumulative_and_le_counts_the_bound():
    histogram = prometheus.Histogram("run_seconds", "Runs.", (1, 5), ("kind",))
    assert histogram.render() == ["# HELP run_seconds Runs.", "# TYPE run_seconds histogram"]
    for value in (0.5, 1, 3, 99):
        histogram.observe(value, "test")
    assert histogram.count("test") == 4 and histogram.sum("test") == 103.5 and histogram.count("x") == 0
    assert histogram.render((("slot", "0"),))[2:] == [
        'run_seconds_bucket{slot="0",kind="test",le="1"} 2',
        'run_seconds_bucket{slot="0",kind="test",le="5"} 3',
        'run_seconds_bucket{slot="0",kind="test",le="+Inf"} 4',
        'run_seconds_sum{slot="0",kind="test"} 103.5',
        'run_seconds_count{slot="0",kind="test"} 4']


def test_a_histogram_without_labels_shows_before_its_first_value():
    histogram = prometheus.Histogram("wait_seconds", "Waits.", (0.5,))
    assert histogram.render()[2:] == ['wait_seconds_bucket{le="0.5"} 0', 'wait_seconds_bucket{le="+Inf"} 0',
                                      "wait_seconds_sum 0", "wait_seconds_count 0"]


class Publisher:
    ready, blocked, in_flight, connections = True, False, 2, 3


def webhook_text():
    metrics = WebhookMetrics(Publisher())
    metrics.deliveries.inc("push", "queued")
    metrics.deliveries.inc("other", "ignored")
    metrics.rejects.inc('odd "reason"\nwith \\ a line')
    for value in (0.0004, 0.003, 0.2, 50):
        metrics.publish_seconds.observe(value)
    return metrics.render()


def worker_text(busy):
    clock = iter(x + 0.125 for x in range(1700000000, 1700001000)).__next__
    metrics = Metrics(None, 'host "1"', 0, clock=clock)
    metrics.job_finished("test", "success", 12.5)
    metrics.job_finished("scan", "failure", 0.3)
    metrics.job_finished(None, "invalid")
    metrics.upload_failures, metrics.reconnects, metrics.connected = 1, 2, 1
    if busy:
        metrics.job_started("gh-72d3162e", "scan")
    return metrics.render()


@pytest.mark.parametrize("name,text", [
    ("webhook", webhook_text()), ("webhook, empty", WebhookMetrics().render()),
    ("worker, busy", worker_text(True)), ("worker, idle", worker_text(False)),
    ("worker, new", Metrics(None, "h", 1, clock=lambda: 1.0).render()),
])
def test_promtool_accepts_the_metrics(name, text):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/bootstrap --for-tests installs it (Debian's prometheus)"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, "%s:\n%s%s\n%s" % (name, done.stdout, done.stderr, text)
