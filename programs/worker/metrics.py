# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus metrics of one worker slot, as a node_exporter textfile.

Each slot writes ``<metrics_dir>/testfleet-worker-<slot>.prom`` (atomically: a temporary file
renamed over the old one) whenever something changes and at least every 30 s. Point
node_exporter's textfile collector at the directory
(``--collector.textfile.directory=/var/lib/testfleet/metrics``). A textfile needs no port per
slot and survives the worker: the last state of a dead worker stays visible, and
``testfleet_worker_last_update_timestamp_seconds`` shows how old it is.

Metrics (labels ``host`` and ``slot`` on every series):

``testfleet_worker_jobs_total{kind,outcome}``        jobs finished: outcome success, failure,
                                                     error (timeout or infrastructure),
                                                     superseded (its pull request moved on),
                                                     requeued (given back to the broker),
                                                     invalid (dead-lettered), duplicate (already
                                                     done), stale (a newer attempt or another
                                                     worker owns its GitHub status)
``testfleet_worker_job_duration_seconds{kind}``      histogram of job durations
``testfleet_worker_busy``                            1 while a job runs
``testfleet_worker_current_job_info{job,kind}``      1 for the job running now
``testfleet_worker_current_job_start_timestamp_seconds``
``testfleet_worker_log_upload_failures_total``       job folders that could not be stored
``testfleet_worker_connected``                       1 while connected to the broker
``testfleet_worker_reconnects_total``                connections lost and made again
``testfleet_worker_draining``                        1 after SIGTERM (no new jobs)
``testfleet_worker_last_update_timestamp_seconds``
"""

from __future__ import annotations

import os
import tempfile
import time

BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels):
    return "{%s}" % ",".join('%s="%s"' % (k, _escape(v)) for k, v in labels)


class Metrics:
    """Counters and gauges of one slot; ``write()`` renders them to the textfile."""

    def __init__(self, path, host, slot, clock=time.time):
        self.path = path
        self.base = (("host", host), ("slot", str(slot)))
        self.clock = clock
        self.jobs = {}            # (kind, outcome) -> count
        self.durations = {}       # kind -> [bucket counts..., sum, count]
        self.current = None       # (job id, kind, start)
        self.upload_failures = 0
        self.connected = 0
        self.reconnects = 0
        self.draining = 0
        self.last_write = 0.0
        self.write_error = None

    def job_started(self, job_id, kind):
        self.current = (job_id, kind, self.clock())
        self.write()

    def job_finished(self, kind, outcome, duration=None):
        self.current = None
        key = (kind or "unknown", outcome)
        self.jobs[key] = self.jobs.get(key, 0) + 1
        if duration is not None:
            counts = self.durations.setdefault(key[0], [0] * len(BUCKETS) + [0.0, 0])
            for index, bound in enumerate(BUCKETS):
                if duration <= bound:
                    counts[index] += 1
            counts[-2] += duration
            counts[-1] += 1
        self.write()

    def set(self, name, value):
        setattr(self, name, value)
        self.write()

    def render(self):
        base = list(self.base)
        out = []

        def metric(name, kind, text, samples):
            out.append("# HELP %s %s" % (name, text))
            out.append("# TYPE %s %s" % (name, kind))
            for labels, value in samples:
                out.append("%s%s %s" % (name, _labels(base + labels), _number(value)))

        metric("testfleet_worker_jobs_total", "counter", "Jobs finished, by kind and outcome.",
               [([("kind", k), ("outcome", o)], n) for (k, o), n in sorted(self.jobs.items())])
        out.append("# HELP testfleet_worker_job_duration_seconds How long jobs ran.")
        out.append("# TYPE testfleet_worker_job_duration_seconds histogram")
        for kind, counts in sorted(self.durations.items()):
            labels = base + [("kind", kind)]
            for index, bound in enumerate(BUCKETS):
                out.append("testfleet_worker_job_duration_seconds_bucket%s %d" % (_labels(labels + [("le", str(bound))]), counts[index]))
            out.append("testfleet_worker_job_duration_seconds_bucket%s %d" % (_labels(labels + [("le", "+Inf")]), counts[-1]))
            out.append("testfleet_worker_job_duration_seconds_sum%s %s" % (_labels(labels), _number(counts[-2])))
            out.append("testfleet_worker_job_duration_seconds_count%s %d" % (_labels(labels), counts[-1]))
        metric("testfleet_worker_busy", "gauge", "1 while a job runs.", [([], 1 if self.current else 0)])
        metric("testfleet_worker_current_job_info", "gauge", "The job running now.",
               [([("job", self.current[0]), ("kind", self.current[1])], 1)] if self.current else [])
        metric("testfleet_worker_current_job_start_timestamp_seconds", "gauge", "When the running job started.",
               [([], self.current[2])] if self.current else [])
        metric("testfleet_worker_log_upload_failures_total", "counter", "Job folders the log store did not take.",
               [([], self.upload_failures)])
        metric("testfleet_worker_connected", "gauge", "1 while connected to the broker.", [([], self.connected)])
        metric("testfleet_worker_reconnects_total", "counter", "Broker connections lost and made again.", [([], self.reconnects)])
        metric("testfleet_worker_draining", "gauge", "1 after a stop was asked for.", [([], self.draining)])
        metric("testfleet_worker_last_update_timestamp_seconds", "gauge", "When this file was written.", [([], self.clock())])
        return "\n".join(out) + "\n"

    def write(self):
        """Write the textfile; a failure is remembered (``write_error``), never raised."""
        self.last_write = self.clock()
        if not self.path:
            return
        try:
            folder = os.path.dirname(self.path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".testfleet-worker-", suffix=".tmp", dir=folder)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.render())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
            self.write_error = None
        except OSError as exc:
            self.write_error = "cannot write the metrics file %s: %s" % (self.path, exc)

    def maybe_write(self, every=30.0):
        if self.clock() - self.last_write >= every:
            self.write()


def _number(value):
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)
