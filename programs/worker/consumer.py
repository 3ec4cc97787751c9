# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testfleet-worker: takes jobs from the broker and runs each as a playbook of this collection.

``testfleet-worker --config FILE [--slot N]`` is one slot: it runs one job at a time. Run one
process per slot (the role installs the systemd template unit ``testfleet-worker@N``).

What it does, in order, for each delivery (prefetch 1):

1. decodes and validates the job (``jobs.py``); a webhook delivery (``{"delivery", "event",
   "payload", ...}``, on the ``events`` queue) is turned into the scan job it calls for
   (``events.py``), or acked with a log line saying why it is ignored. An invalid job or
   delivery, or a kind without a ``playbooks/jobs/<kind>.yml``, is published to the
   dead-letter exchange with the header ``x-testfleet-reason`` (publisher confirm first) and
   then acked: never retried, never lost;
2. runs the job (``job.JobRun``) in a thread while the main thread keeps the connection
   serviced, so heartbeats flow however long the job runs;
3. acks only after the playbook finished and its log folder and ``result.json`` are stored (or
   storing them finally failed: a broken store never fails a job; the worker log and the metric
   ``testfleet_worker_log_upload_failures_total`` say so). An infrastructure error is rejected
   with requeue: the quorum queue counts the delivery and dead-letters the job at its delivery
   limit. A failing test is a result: acked.

The job's timeout (its ``timeout``, else ``worker.default_timeout``) stops the playbook and
gives the result error "timed out after N s". The broker's ``consumer_timeout`` (rabbitmq.conf)
must be longer than the longest job timeout, or the broker closes the channel of a long job
and redelivers it: the rabbitmq role sets it from the longest timeout.

Signals: SIGTERM (or SIGINT) drains: the worker takes no new job, finishes the current one and
exits 0. A second SIGTERM, or ``worker.drain_timeout`` seconds after the first, cancels the
current job and requeues it. SIGKILL loses nothing: the broker redelivers the unacked job to
another worker, and the job's playbook stops itself when it sees the worker gone.

A queue with ``x-single-active-consumer`` (``events``: scans must never run concurrently) feeds
one consumer of the fleet at a time. While a job from such a queue runs, the worker stays
subscribed to it (its prefetch of 1 is taken by that job, so nothing more arrives) even when it
pauses its other queues or drains: cancelling that consumer would let the broker hand the next
message to another worker at once, while this job still runs.

When the broker goes away the worker reconnects with exponential backoff (1 s doubling to
30 s, with jitter), and keeps a running job running meanwhile: its delivery is lost with the
connection, so the broker redelivers it; the redelivered copy is acked without running again
when the first run's final result is already stored.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import shutil
import signal
import socket
import sys
import time

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.plugin_utils import events
from ansible_collections.testfleet.infra.plugins.module_utils.forge import client as forge
from ansible_collections.testfleet.infra.plugins.plugin_utils import job_report
from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run
from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore
from ansible_collections.testfleet.infra.plugins.module_utils import topology as topology_lib
from ansible_collections.testfleet.infra.programs.worker.job import DUPLICATE, STALE, JobRun, JobSettings
from ansible_collections.testfleet.infra.programs.worker.metrics import Metrics

pika = amqp.pika
LOG = logging.getLogger("testfleet.worker")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_CONFIG = 2
REASON_HEADER = "x-testfleet-reason"


class WorkerConfig:
    """The parts of the config file the worker uses."""

    def __init__(self, config, worker, log_store):
        self.config = config
        self.worker = worker
        self.log_store = log_store

    @property
    def path(self):
        return self.config.path


def load_config(path):
    """Read the config file; raise config.ConfigError naming what is wrong."""
    config = config_lib.load(path)
    return WorkerConfig(config, dict(config.section("worker")), dict(config.section("log_store")))


def github_reporter(cfg, host_label):
    """The GitHub reporter of test jobs when the config has a ``forge`` section, else None."""
    if "forge" not in cfg.config.given:
        return None
    forge_section = cfg.config.section("forge")
    client = forge.ForgeClient(api_url=forge_section["api_url"], token_file=forge_section["token_file"],
                               etag_cache_dir=os.path.join(cfg.worker["work_dir"], "forge-cache"))
    return job_report.GitHubReporter(client, host_label, check_interval=cfg.worker["pull_check_interval"])


class CurrentJob:
    """The job a worker slot runs, and the delivery it came in."""

    __slots__ = ("run", "channel", "delivery_tag", "kind", "queue")

    def __init__(self, run, channel, delivery_tag, kind, queue):
        self.run = run                      # job.JobRun
        self.channel = channel              # the channel of the delivery (acked or rejected on it)
        self.delivery_tag = delivery_tag
        self.kind = kind
        self.queue = queue                  # where it came from


class Worker:
    """One worker slot: the consumer loop. ``run()`` returns the exit code."""

    def __init__(self, cfg, slot=0, poll_interval=1.0):
        self.cfg = cfg
        self.slot = slot
        self.poll_interval = poll_interval
        worker = cfg.worker
        self.queues = list(worker["queues"])
        self.host = worker.get("host_name") or socket.gethostname()
        self.topology = cfg.config.topology
        expanded = topology_lib.expand(self.topology)
        self.dead_letter_exchange = expanded["exchanges"][0]["name"]
        # queues whose consumers take turns: keep consuming them while their job runs
        self.single_active = set(q["name"] for q in expanded["queues"]
                                 if q["arguments"].get(topology_lib.SINGLE_ACTIVE_CONSUMER))
        self.settings = cfg.config.amqp_settings(connection_name="testfleet-worker %s/%s" % (self.host, slot))
        store = logstore.open_store(**cfg.log_store)
        self.job_settings = JobSettings(
            work_dir=worker["work_dir"], host=self.host, slot=slot, store=store, store_settings=cfg.log_store,
            default_timeout=worker["default_timeout"], clone_url=worker["clone_url"],
            flush_interval=worker["log_flush_interval"], flush_bytes=worker["log_flush_bytes"],
            upload_timeout=worker["upload_timeout"], retry_delay=worker["retry_delay"], config_path=cfg.path,
            reporter=github_reporter(cfg, "%s/%s" % (self.host, slot)))
        self.drain_timeout = worker.get("drain_timeout")
        metrics_dir = worker.get("metrics_dir")
        self.metrics = Metrics(os.path.join(metrics_dir, "testfleet-worker-%s.prom" % slot) if metrics_dir else None,
                               self.host, slot)
        self.connection = None
        self.channel = None
        self.publisher = None
        self.consumer_tags = {}      # queue -> consumer tag
        self.deliveries = collections.deque()
        self.current = None          # CurrentJob while a job runs
        self.stopping = False
        self.stop_signals = 0
        self.drain_deadline = None
        self.backoff = 1.0
        self.next_connect = 0.0
        self.connected_at = None

    # --- signals ------------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        # only flags here: the loop acts on them within poll_interval
        self.stop_signals += 1
        if self.stop_signals == 1:
            self.stopping = True
            if self.drain_timeout:
                self.drain_deadline = time.monotonic() + self.drain_timeout

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # --- broker -------------------------------------------------------------------------------
    def _connect(self):
        connection = amqp.connect(self.settings)
        try:
            channel = connection.channel()
            for queue in self.queues:
                topology_lib.ensure_queue(channel, self.topology, queue)
            channel.basic_qos(prefetch_count=1)
        except Exception as exc:
            if connection.is_open:
                connection.close()
            cause = exc.__cause__ if isinstance(exc, amqp.AmqpError) else exc
            if isinstance(cause, (pika.exceptions.AMQPConnectionError, pika.exceptions.StreamLostError)):
                raise amqp.BrokerUnreachable("the broker at %s went away while the worker set up its queues: %s"
                                             % (self.settings.display_url, cause))
            raise
        self.connection, self.channel, self.publisher = connection, channel, None
        self.connected_at = time.monotonic()
        self.metrics.set("connected", 1)
        LOG.info("connected to %s, queues %s", self.settings.display_url, ", ".join(self.queues))

    def _drop_connection(self, why):
        LOG.warning("lost the broker connection (%s); reconnecting", why)
        connection, self.connection, self.channel, self.publisher = self.connection, None, None, None
        self.consumer_tags = {}
        # deliveries not started belong to the lost channel: the broker requeued them
        self.deliveries.clear()
        try:
            if connection is not None and connection.is_open:
                connection.close()
        except Exception:
            pass
        if self.connected_at is not None and time.monotonic() - self.connected_at > 30:
            self.backoff = 1.0
        self.metrics.reconnects += 1
        self.metrics.set("connected", 0)
        self.next_connect = time.monotonic() + self.backoff * random.uniform(0.8, 1.2)

    def _consume(self):
        if self.channel is None:
            return
        for queue in self.queues:
            if queue not in self.consumer_tags:
                self.consumer_tags[queue] = self.channel.basic_consume(queue, self._on_message, auto_ack=False)

    def _pause(self, keep=None):
        """Take no more deliveries (pika nacks those received but not yet dispatched), except
        from the queue ``keep`` (see the module docstring: single-active-consumer queues)."""
        for queue in [q for q in self.consumer_tags if q != keep]:
            self.channel.basic_cancel(self.consumer_tags.pop(queue))

    def _kept_queue(self):
        """The single-active-consumer queue of the running job, which stays subscribed."""
        if self.current is not None and self.current.queue in self.single_active:
            return self.current.queue
        return None

    def _queue_of(self, method):
        for queue, tag in self.consumer_tags.items():
            if tag == method.consumer_tag:
                return queue
        return method.routing_key

    def _on_message(self, channel, method, properties, body):
        self.deliveries.append((channel, method, properties, body))

    def _wake(self):
        connection = self.connection
        if connection is not None:
            connection.add_callback_threadsafe(lambda: None)

    # --- deliveries ---------------------------------------------------------------------------
    def _dead_letter(self, channel, method, properties, body, reason):
        if self.publisher is None:
            self.publisher = amqp.ConfirmedPublisher(self.connection)
        headers = dict((properties.headers or {}), **{
            REASON_HEADER: reason, "x-testfleet-queue": method.routing_key,
            "x-testfleet-worker": "%s/%s" % (self.host, self.slot)})
        try:
            self.publisher.publish(self.dead_letter_exchange, method.routing_key, body,
                                   message_id=properties.message_id, headers=headers,
                                   content_type=properties.content_type or "application/octet-stream")
        except amqp.PublishRefused as exc:
            LOG.error("cannot dead-letter an invalid job (%s): requeueing it: %s", reason, exc)
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        channel.basic_ack(method.delivery_tag)
        LOG.warning("dead-lettered an invalid job from %s: %s", method.routing_key, reason)
        self.metrics.job_finished("unknown", "invalid")

    def _take(self, delivery):
        channel, method, properties, body = delivery
        queue = self._queue_of(method)
        try:
            job, why = events.job_for_message(body)
            if job is not None and job_run.playbook_for(job["kind"]) is None:
                raise jobs.JobError("kind", "names no job playbook: this collection has no playbooks/jobs/%s.yml" % job["kind"])
        except (jobs.JobError, events.InvalidDelivery) as exc:
            self._dead_letter(channel, method, properties, body, str(exc))
            return
        if job is None:
            channel.basic_ack(method.delivery_tag)
            LOG.info("webhook delivery %s from %s: ignored, acked: %s", properties.message_id or "(no id)", queue, why)
            self.metrics.job_finished("delivery", "ignored")
            return
        if why:
            LOG.info("webhook delivery %s from %s: %s: runs as job %s", properties.message_id or "(no id)", queue, why, job["id"])
        headers = properties.headers or {}
        delivery_count = int(headers.get("x-delivery-count") or 0) + 1
        run = JobRun(job, self.job_settings, delivery=delivery_count, redelivered=bool(method.redelivered), wake=self._wake)
        self.current = CurrentJob(run, channel, method.delivery_tag, job["kind"], queue)
        if len(self.queues) > 1:
            self._pause(keep=self._kept_queue())
        LOG.info("job %s (%s) from %s: started (delivery %d)", job["id"], job["kind"], queue, delivery_count)
        self.metrics.job_started(job["id"], job["kind"])
        run.start()

    def _finish(self):
        current, self.current = self.current, None
        run, channel, queue = current.run, current.channel, current.queue
        job_id = run.job["id"]
        action = run.action or "requeue"
        if self.stopping and queue in self.consumer_tags and channel is self.channel and channel.is_open:
            self._pause()  # unsubscribe before the ack, or the broker sends this worker the next message
        if channel is not self.channel or channel is None or not channel.is_open:
            LOG.warning("job %s: its delivery was lost with the broker connection; the broker redelivers it (%s)",
                        job_id, "its result is stored, so the copy is not run again" if run.stored and action == "ack" else "it runs again")
        elif action == "ack":
            channel.basic_ack(current.delivery_tag)
        else:
            channel.basic_nack(current.delivery_tag, requeue=True)
        if run.stored is False:
            self.metrics.upload_failures += 1
        outcome = run.outcome if action == "ack" else "requeued"
        LOG.info("job %s: %s%s, %s", job_id, outcome if outcome != "requeued" else "requeued",
                 (" (%s)" % run.result.get("reason")) if run.result and run.result.get("reason") else "",
                 "acked" if action == "ack" else "rejected with requeue")
        self.metrics.job_finished(current.kind, outcome, run.duration if outcome not in (DUPLICATE, STALE) else None)

    # --- the loop -----------------------------------------------------------------------------
    def _supervise(self):
        """Apply the job's timeout and the stop requests to the running job; return it."""
        run = self.current.run
        run.check_timeout()
        if run.cancel_reason is None:
            if self.stop_signals > 1:
                LOG.warning("job %s: second stop signal: cancelling and requeueing it", run.job["id"])
                run.cancel(job_run.STOP)
            elif self.drain_deadline is not None and time.monotonic() > self.drain_deadline:
                LOG.warning("job %s: still running %d s after the stop signal: cancelling and requeueing it",
                            run.job["id"], self.drain_timeout)
                run.cancel(job_run.STOP)
        return run

    def _step(self):
        """One turn of the loop; raise pika connection errors to the caller."""
        if self.stopping and not self.metrics.draining:
            LOG.info("stopping: taking no new job%s", "; the current job finishes first" if self.current else "")
            self.metrics.set("draining", 1)
        if self.stopping and set(self.consumer_tags) - {self._kept_queue()}:
            self._pause(keep=self._kept_queue())
        if self.stopping:
            while self.deliveries:
                channel, method = self.deliveries.popleft()[:2]
                channel.basic_nack(method.delivery_tag, requeue=True)
        if self.current is not None:
            run = self._supervise()
            if run.done.is_set():
                run.join()
                self._finish()
        if self.current is None and self.deliveries and not self.stopping:
            self._take(self.deliveries.popleft())
        if self.current is None and not self.deliveries and not self.stopping:
            self._consume()
        self.connection.process_data_events(time_limit=self.poll_interval)

    def _wait_without_broker(self):
        """No connection: keep a running job supervised, connect again when the backoff allows."""
        if self.current is not None:
            run = self._supervise()
            if run.done.wait(0.5):
                run.join()
                self._finish()
        elif self.stopping:
            return
        now = time.monotonic()
        if now < self.next_connect:
            time.sleep(min(0.5, self.next_connect - now))
            return
        try:
            self._connect()
        except amqp.BrokerUnreachable as exc:
            LOG.warning("%s; next attempt in %.0f s", exc, self.backoff)
            self.next_connect = time.monotonic() + self.backoff * random.uniform(0.8, 1.2)
            self.backoff = min(self.backoff * 2, 30.0)

    def run(self):
        self.install_signal_handlers()
        self._clean_work_dir()
        self.metrics.write()
        errors = (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelClosed, pika.exceptions.ChannelWrongStateError,
                  pika.exceptions.StreamLostError, pika.exceptions.ConnectionWrongStateError, amqp.BrokerUnreachable)
        try:
            while True:
                if self.stopping and self.current is None:
                    LOG.info("stopping (signal received, no job running)")
                    break
                try:
                    if self.connection is None:
                        self._wait_without_broker()
                    else:
                        self._step()
                except errors as exc:
                    self._drop_connection("%s: %s" % (type(exc).__name__, exc))
                self.metrics.maybe_write()
        except (amqp.AmqpError, topology_lib.TopologyError) as exc:
            LOG.error("%s", exc)
            return EXIT_FATAL
        finally:
            if self.current is not None:  # only on a fatal error: give the job back
                self.current.run.cancel(job_run.STOP)
                self.current.run.join(30)
            if self.connection is not None and self.connection.is_open:
                try:
                    self.connection.close()
                except Exception:
                    pass
            self.metrics.connected = 0
            self.metrics.write()
        LOG.info("stopped")
        return EXIT_OK

    def _clean_work_dir(self):
        """Remove what a killed worker of this slot left behind."""
        slot_dir = self.job_settings.slot_dir
        if os.path.isdir(slot_dir):
            for name in os.listdir(slot_dir):
                LOG.info("removing %s, left by a previous run", os.path.join(slot_dir, name))
                shutil.rmtree(os.path.join(slot_dir, name), ignore_errors=True)
        os.makedirs(slot_dir, mode=0o700, exist_ok=True)


def _parser():
    parser = argparse.ArgumentParser(
        prog="testfleet-worker",
        description="Consume testfleet jobs from the broker and run each as a playbook of the "
                    "testfleet.infra collection through ansible-runner (one job at a time: run one "
                    "process per slot).")
    parser.add_argument("--config", default=config_lib.default_path(),
                        help="the testfleet config file (default: $%s or %s)" % (config_lib.PATH_ENV, config_lib.DEFAULT_PATH))
    parser.add_argument("--slot", default=os.environ.get("TESTFLEET_SLOT", "0"),
                        help="this process's slot (a name of letters and digits; default $TESTFLEET_SLOT or 0)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--check", action="store_true",
                        help="only check the config file and exit (0: valid)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%%(asctime)s testfleet-worker[%s] %%(levelname)s %%(message)s" % args.slot)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    if not args.slot.isalnum():
        LOG.error("--slot must be letters and digits, not %r", args.slot)
        return EXIT_CONFIG
    try:
        cfg = load_config(args.config)
        worker = Worker(cfg, slot=args.slot)
    except (config_lib.ConfigError, logstore.LogStoreError, topology_lib.TopologyError, amqp.AmqpError,
            forge.ForgeError) as exc:
        LOG.error("%s", exc)
        return EXIT_CONFIG
    if args.check:
        sys.stdout.write("%s: valid for testfleet-worker (queues %s, log store %s)\n" % (
            args.config, ", ".join(worker.queues), worker.job_settings.store.location("JOB")))
        return EXIT_OK
    return worker.run()
