# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus metrics of one worker slot, as a node_exporter textfile.

Each slot writes ``<metrics_dir>/testfleet-worker-<slot>.prom`` (atomically, mode 0644, with
``files.write_atomic``; rendered by :mod:`..prometheus`) whenever something changes and at least every 30 s. Point
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
import time

from ansible_collections.testfleet.infra.plugins.module_utils.files import write_atomic
from ansible_collections.testfleet.infra.programs import prometheus

BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


class Metrics:
    """Counters and gauges of one slot; ``write()`` renders them to the textfile."""

    def __init__(self, path, host, slot, clock=time.time):
        self.path = path
        self.base = (("host", host), ("slot", str(slot)))
        self.clock = clock
        self.jobs = prometheus.Counter("testfleet_worker_jobs_total", "Jobs finished, by kind and outcome.",
                                       ("kind", "outcome"))
        self.durations = prometheus.Histogram("testfleet_worker_job_duration_seconds", "How long jobs ran.",
                                              BUCKETS, ("kind",))
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
        kind = kind or "unknown"
        self.jobs.inc(kind, outcome)
        if duration is not None:
            self.durations.observe(duration, kind)
        self.write()

    def set(self, name, value):
        setattr(self, name, value)
        self.write()

    def render(self):
        base = self.base
        current = self.current

        def gauge(name, text, samples, kind="gauge"):
            return prometheus.family(name, kind, text, samples, base)

        lines = self.jobs.render(base) + self.durations.render(base)
        lines += gauge("testfleet_worker_busy", "1 while a job runs.", [((), 1 if current else 0)])
        lines += gauge("testfleet_worker_current_job_info", "The job running now.",
                       [((("job", current[0]), ("kind", current[1])), 1)] if current else [])
        lines += gauge("testfleet_worker_current_job_start_timestamp_seconds", "When the running job started.",
                       [((), current[2])] if current else [])
        lines += gauge("testfleet_worker_log_upload_failures_total", "Job folders the log store did not take.",
                       [((), self.upload_failures)], kind="counter")
        lines += gauge("testfleet_worker_connected", "1 while connected to the broker.", [((), self.connected)])
        lines += gauge("testfleet_worker_reconnects_total", "Broker connections lost and made again.",
                       [((), self.reconnects)], kind="counter")
        lines += gauge("testfleet_worker_draining", "1 after a stop was asked for.", [((), self.draining)])
        lines += gauge("testfleet_worker_last_update_timestamp_seconds", "When this file was written.",
                       [((), self.clock())])
        return prometheus.text(lines)

    def write(self):
        """Write the textfile; a failure is remembered (``write_error``), never raised."""
        self.last_write = self.clock()
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_atomic(self.path, self.render(), mode=0o644, fsync=False, prefix=".testfleet-worker-")
            self.write_error = None
        except OSError as exc:
            self.write_error = "cannot write the metrics file %s: %s" % (self.path, exc)

    def maybe_write(self, every=30.0):
        if self.clock() - self.last_write >= every:
            self.write()
