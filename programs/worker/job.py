# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One job of testfleet-worker: its playbook run through ansible-runner, its result, its log.

:class:`JobRun` runs in a thread of its own while the worker's main thread keeps the broker
connection serviced (heartbeats) and decides when to cancel it (the job's timeout, a second
SIGTERM). When the thread ends, ``action`` says what the main thread does with the delivery:
``ack`` (a result: success, failure, timeout, or a duplicate of a job already done) or
``requeue`` (an infrastructure error or a stopped worker: the broker counts the delivery and,
at the queue's delivery limit, dead-letters it).

The job's playbook is ``playbooks/jobs/<kind>.yml`` of the collection this code is part of; it
runs in a private data dir ``<work_dir>/slot-<n>/<job-id>.<random>/`` that is removed after the
job, with the job as extra vars and the callback ``testfleet.infra.job_log`` writing the log
folder to a spool in the private data dir. After the playbook, the whole folder is stored
again from the spool (the callback could have been killed), ``result.json`` last.

A test job that the scanner queued (``report.github``) is reported to GitHub through
``job_report.GitHubReporter``: skipped when its context shows that a newer attempt replaced it
or that it already ran, ``running`` when its playbook starts, the outcome once its log folder
is stored (a failed post requeues the delivery, whose next worker posts the stored result), and
cancelled as ``superseded`` when its pull request moves on or closes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

try:
    import ansible_runner
    HAS_RUNNER = True
    RUNNER_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    ansible_runner = None
    HAS_RUNNER = False
    RUNNER_IMPORT_ERROR = exc

from ansible_collections.testfleet.infra.plugins.plugin_utils import job_report
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore import store as logstore

LOG = logging.getLogger("testfleet.worker")

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the directory holding ansible_collections/testfleet/infra (-> COLLECTION_ROOT)
COLLECTIONS_PATH = os.path.dirname(os.path.dirname(os.path.dirname(COLLECTION_ROOT)))
PLAYBOOK_DIR = os.path.join(COLLECTION_ROOT, "playbooks", "jobs")
CALLBACK = "testfleet.infra.job_log"
TERMINAL = ("success", "failure", "superseded")


def playbook_for(kind):
    """The playbook of a job kind, or None when this collection has none."""
    path = os.path.join(PLAYBOOK_DIR, "%s.yml" % kind)
    return path if os.path.isfile(path) else None


def is_done(result):
    """Whether a stored result is final (the job need not run again)."""
    if not isinstance(result, dict):
        return False
    return result.get("outcome") in TERMINAL or (result.get("outcome") == "error" and not result.get("retry"))


class JobSettings:
    """What every job of a worker slot shares (from the config file)."""

    def __init__(self, work_dir, host, slot, store, store_settings, default_timeout=7200, clone_url=None,
                 flush_interval=2.0, flush_bytes=65536, upload_timeout=60.0, retry_delay=10.0, pexpect_timeout=0.5,
                 config_path=None, reporter=None):
        self.work_dir = work_dir
        self.host = host
        self.slot = slot
        self.store = store
        self.store_settings = store_settings
        self.default_timeout = default_timeout
        self.clone_url = clone_url
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self.upload_timeout = upload_timeout
        self.retry_delay = retry_delay
        self.pexpect_timeout = pexpect_timeout
        self.config_path = config_path      # handed to job playbooks (the scan reads it)
        self.reporter = reporter            # job_report.GitHubReporter, or None (no forge section)

    @property
    def slot_dir(self):
        return os.path.join(self.work_dir, "slot-%s" % self.slot)

    @property
    def unsent_dir(self):
        return os.path.join(self.work_dir, "unsent")

    @property
    def host_label(self):
        return "%s/%s" % (self.host, self.slot)


class JobRun:
    """Runs one valid job in a thread; see the module docstring."""

    def __init__(self, job, settings, delivery=1, redelivered=False, wake=None, clock=time.monotonic):
        self.job = job
        self.settings = settings
        self.delivery = delivery
        self.redelivered = redelivered
        self.wake = wake
        self.clock = clock
        self.timeout = int(job.get("timeout") or settings.default_timeout)
        self.cancel_reason = None
        self.superseded_reason = None
        self.github = job_report.github_report(job) if settings.reporter is not None else None
        self.started = None
        self.runner_started = None
        self.action = None          # "ack" or "requeue" once done
        self.outcome = None
        self.result = None
        self.stored = None
        self.store_error = None
        self.done = threading.Event()
        self.private_dir = None
        self._thread = None
        self._stop_wait = threading.Event()

    # --- main thread --------------------------------------------------------------------------
    def start(self):
        self.started = self.clock()
        self._thread = threading.Thread(target=self._main, name="testfleet-job-%s" % self.job["id"], daemon=True)
        self._thread.start()
        return self

    def cancel(self, reason):
        """Ask the playbook to stop: ``timeout`` (a result) or ``stop`` (the job is requeued)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._stop_wait.set()

    def check_timeout(self):
        began = self.runner_started
        if began is not None and self.cancel_reason is None and self.clock() - began > self.timeout:
            LOG.warning("job %s: timed out after %d s, stopping its playbook", self.job["id"], self.timeout)
            self.cancel("timeout")

    def join(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def duration(self):
        return None if self.started is None else self.clock() - self.started

    # --- job thread ---------------------------------------------------------------------------
    def _main(self):
        try:
            self._run()
        except Exception as exc:  # never leave the main thread waiting
            LOG.exception("job %s: unexpected error", self.job["id"])
            self._settle("requeue", "error", None)
            self.store_error = str(exc)
        finally:
            self._cleanup()
            self.done.set()
            if self.wake is not None:
                try:
                    self.wake()
                except Exception:
                    pass

    def _settle(self, action, outcome, result):
        self.action, self.outcome, self.result = action, outcome, result

    def _run(self):
        job_id = self.job["id"]
        store = self.settings.store
        if self.redelivered:
            try:
                previous = json.loads((store.get(job_id, logstore.RESULT) or b"null").decode("utf-8"))
            except (logstore.LogStoreError, ValueError) as exc:
                previous = None
                LOG.warning("job %s: cannot read its stored result (%s): running it", job_id, exc)
            if is_done(previous):
                LOG.info("job %s: redelivered, but its result (%s) is stored: not running it again", job_id, previous["outcome"])
                self._settle(self._report_finished(previous, "ack"), "duplicate", previous)
                return
        if self.github is not None:
            try:
                stale = self.settings.reporter.stale(self.job, self.redelivered)
            except Exception as exc:  # GitHub unreachable: run it; the statuses may lag
                stale = None
                LOG.warning("job %s: cannot read its GitHub status (%s): running it", job_id, exc)
            if stale:
                LOG.info("job %s: not running it: %s", job_id, stale)
                self._settle("ack", "stale", {"outcome": "stale", "reason": stale})
                return
        elif job_report.github_report(self.job) is not None:
            LOG.warning("job %s: asks for GitHub statuses, but this worker's config has no forge section", job_id)
        start = time.time()
        try:
            os.makedirs(self.settings.slot_dir, mode=0o700, exist_ok=True)
            self.private_dir = tempfile.mkdtemp(prefix="%s." % job_id, dir=self.settings.slot_dir)
            spool_dir = os.path.join(self.private_dir, "spool")
            os.makedirs(spool_dir, mode=0o700)
        except OSError as exc:
            LOG.error("job %s: cannot prepare its private data dir in %s: %s", job_id, self.settings.slot_dir, exc)
            self._infra_pause()
            self._settle("requeue", "error", None)
            return
        runner_status, rc, runner_error = self._run_playbook(spool_dir)
        spool = logstore.JobSpool(spool_dir, job_id)
        local = spool.read_result()
        result, action, note = self._decide(local, runner_status, rc, runner_error, start)
        if note:
            spool.append("\n[testfleet-worker %s: %s]\n" % (self.settings.host_label, note))
        if local is None and self.cancel_reason is None:
            self._append_runner_output(spool)
        redactor = logstore.Redactor(logstore.job_secrets(self.job))
        result = redactor.data(result)
        spool.write(logstore.RESULT, logstore.result_bytes(result))
        ok, error = logstore.upload_folder(store, spool, result, deadline=self.settings.upload_timeout, redactor=redactor,
                                           on_error=lambda message: LOG.warning("job %s: log store: %s", job_id, message))
        self.stored, self.store_error = ok, error
        if not ok:
            LOG.error("job %s: its log folder could not be stored (%s); it is kept in %s", job_id, error, self._keep_unsent(spool))
        if action == "requeue":
            self._infra_pause()
        if action == "ack":
            action = self._report_finished(result, action)
        self._settle(action, result["outcome"], result)

    def _report_finished(self, result, action):
        """Post the job's outcome; a failed post turns ``ack`` into ``requeue`` (never a lost status)."""
        if self.github is None:
            return action
        try:
            self.settings.reporter.finished(self.job, result)
        except Exception as exc:
            LOG.error("job %s: cannot post its outcome to GitHub (%s); the job is requeued so that the next "
                      "worker posts its stored result", self.job["id"], exc)
            self._infra_pause()
            return "requeue"
        return action

    def _report_running(self):
        if self.github is None:
            return
        try:
            self.settings.reporter.running(self.job, self.timeout, self.settings.store.location(self.job["id"], logstore.VIEWER),
                                           redelivered=self.redelivered)
        except Exception as exc:
            LOG.warning("job %s: cannot post its running status to GitHub (%s)", self.job["id"], exc)

    def _watch_pull(self):
        """Cancel the job (``superseded``) once its pull request closed or moved on; a thread."""
        reporter = self.settings.reporter
        while not self._stop_wait.wait(reporter.check_interval) and not self.done.is_set():
            try:
                reason = reporter.superseded(self.job)
            except Exception as exc:
                LOG.warning("job %s: cannot check its pull request (%s)", self.job["id"], exc)
                continue
            if reason:
                LOG.info("job %s: superseded (%s): stopping its playbook", self.job["id"], reason)
                self.superseded_reason = reason
                self.cancel("superseded")
                return

    def _infra_pause(self):
        """Wait a little before an infrastructure error is requeued (no hot retry loop)."""
        if self.cancel_reason not in ("stop", "superseded") and self.settings.retry_delay > 0:
            self._stop_wait.wait(self.settings.retry_delay)

    def _run_playbook(self, spool_dir):
        """Run the playbook; return (runner status, rc, error text or None)."""
        job_id = self.job["id"]
        if not HAS_RUNNER:
            return "error", None, "the Python library ansible-runner is not installed"
        playbook = playbook_for(self.job["kind"])
        if playbook is None:
            return "error", None, "no playbook for the job kind %r in %s" % (self.job["kind"], PLAYBOOK_DIR)
        settings = self.settings
        store = settings.store_settings
        bindir = os.path.dirname(sys.executable)
        collections = [COLLECTIONS_PATH] + [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
        envvars = {
            "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
            "ANSIBLE_CALLBACKS_ENABLED": CALLBACK,
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(collections),
            "ANSIBLE_LOCAL_TEMP": os.path.join(self.private_dir, "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "TESTFLEET_WORKER_PID": str(os.getpid()),
            "TESTFLEET_SPOOL_DIR": spool_dir,
            "TESTFLEET_HOST": settings.host_label,
            "TESTFLEET_LOG_STORE": store.get("url") or logstore.DEFAULT_URL,
            "TESTFLEET_LOG_FLUSH_INTERVAL": str(settings.flush_interval),
            "TESTFLEET_LOG_FLUSH_BYTES": str(settings.flush_bytes),
        }
        for key, name in (("endpoint_url", "TESTFLEET_LOG_STORE_ENDPOINT_URL"), ("public_url", "TESTFLEET_LOG_STORE_PUBLIC_URL"),
                          ("region", "AWS_DEFAULT_REGION")):
            if store.get(key):
                envvars[name] = str(store[key])
        work = os.path.join(self.private_dir, "work")
        os.makedirs(work, mode=0o700)
        extravars = dict(self.job)
        extravars.update({
            "testfleet_worker": {"host": settings.host, "slot": settings.slot, "delivery": self.delivery},
            "testfleet_host": settings.host_label,
            "testfleet_work_dir": work,
        })
        if settings.clone_url:
            extravars["testfleet_clone_url_template"] = settings.clone_url
        if settings.config_path:
            extravars["testfleet_config"] = settings.config_path
        self._report_running()
        if self.github is not None and self.job.get("pull"):
            threading.Thread(target=self._watch_pull, name="testfleet-watch-%s" % job_id, daemon=True).start()
        self.runner_started = self.clock()
        LOG.info("job %s: running %s (timeout %d s, delivery %d)", job_id, os.path.basename(playbook), self.timeout, self.delivery)
        try:
            runner = ansible_runner.run(
                private_data_dir=self.private_dir,
                playbook=playbook,
                inventory={"all": {"hosts": {"localhost": {
                    "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}},
                extravars=extravars,
                envvars=envvars,
                ident="run",
                quiet=True,
                settings={"pexpect_timeout": settings.pexpect_timeout, "suppress_ansible_output": True},
                cancel_callback=lambda: self.cancel_reason is not None,
            )
        except Exception as exc:
            LOG.error("job %s: ansible-runner could not run the playbook: %s: %s", job_id, type(exc).__name__, exc)
            return "error", None, "ansible-runner could not run the playbook: %s: %s" % (type(exc).__name__, exc)
        return runner.status, runner.rc, None

    def _decide(self, local, runner_status, rc, runner_error, start):
        """The final result, what to do with the delivery, and a note for the log."""
        end = time.time()
        result = dict(local) if isinstance(local, dict) else {
            "job": logstore.public_job(self.job), "host": self.settings.host_label, "start": logstore.utc_now_iso(start)}
        result.pop("stored_log_bytes", None)
        began = logstore.parse_iso(result["start"]) if result.get("start") else start
        result.update({"end": logstore.utc_now_iso(end), "duration": round(end - began, 3)})
        result["worker"] = {"host": self.settings.host, "slot": self.settings.slot, "delivery": self.delivery,
                            "runner_status": runner_status, "rc": rc}
        result.setdefault("log_url", self.settings.store.location(self.job["id"], logstore.VIEWER))
        outcome = local.get("outcome") if isinstance(local, dict) else None
        if self.cancel_reason == "timeout":
            reason = "timed out after %d s" % self.timeout
            result.update(outcome="error", reason=reason, retry=False)
            return result, "ack", reason
        if self.cancel_reason == "superseded":
            result.update(outcome="superseded", reason=self.superseded_reason, retry=False)
            return result, "ack", "superseded: %s" % self.superseded_reason
        if self.cancel_reason == "stop":
            reason = "the worker was stopped during the job; the job was requeued"
            result.update(outcome="error", reason=reason, retry=True)
            return result, "requeue", reason
        if outcome in TERMINAL:
            return result, "ack", None
        if outcome == "error":
            result["retry"] = True
            return result, "requeue", "infrastructure error, the job is requeued: %s" % result.get("reason")
        reason = runner_error or "the playbook ended without an outcome (ansible-runner status %s, rc %s)" % (runner_status, rc)
        result.update(outcome="error", reason=reason, retry=True)
        return result, "requeue", reason + "; the job is requeued"

    def _append_runner_output(self, spool):
        """Put the end of ansible-playbook's own output in the log when the callback gave no outcome."""
        path = os.path.join(self.private_dir or "", "artifacts", "run", "stdout")
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(path) - 8192))
                tail = handle.read().decode("utf-8", "replace")
        except OSError:
            return
        if tail.strip():
            redactor = logstore.Redactor(logstore.job_secrets(self.job))
            spool.append("[the end of ansible-playbook's output]\n%s\n" % redactor.text(tail.rstrip()))

    def _keep_unsent(self, spool):
        target = os.path.join(self.settings.unsent_dir, "%s.%d" % (self.job["id"], int(time.time())))
        try:
            os.makedirs(self.settings.unsent_dir, mode=0o700, exist_ok=True)
            shutil.move(spool.path, target)
            return target
        except OSError as exc:
            LOG.error("job %s: cannot keep its log folder in %s: %s", self.job["id"], target, exc)
            return spool.path

    def _cleanup(self):
        if self.private_dir:
            shutil.rmtree(self.private_dir, ignore_errors=True)
