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
job, with the extra vars and callback options of the job-run contract
(``plugin_utils/job_run.py``) and the callback ``testfleet.infra.job_log`` writing the log
folder to a spool in the private data dir. After the playbook, ``job_run.finish`` decides the
outcome from the play's verdict and what the worker knows (timeout, stop, superseded) and stores
the whole folder again from the spool (the callback could have been killed), ``result.json``
last.

A test job that the scanner queued (``report.github``) is reported to GitHub through
``job_report.GitHubReporter``: skipped when its context shows that a newer attempt replaced it
or that it already ran, ``running`` when its playbook starts, the outcome once its log folder
is stored (a failed post requeues the delivery, whose next worker posts the stored result), and
cancelled as ``superseded`` when its pull request moves on or closes.
"""

from __future__ import annotations

import dataclasses
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

from ansible_collections.testfleet.infra.plugins.callback import job_log
from ansible_collections.testfleet.infra.plugins.module_utils.config import SCHEMA
from ansible_collections.testfleet.infra.plugins.plugin_utils import job_report
from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore

LOG = logging.getLogger("testfleet.worker")

# what a job's delivery ends in besides a result's outcome (metrics labels)
DUPLICATE = "duplicate"     # redelivered, and its final result is already stored
STALE = "stale"             # its GitHub context shows that another attempt owns it
RUNNER_ERROR = "error"      # ansible-runner's status when it could not run the playbook at all

_WORKER = SCHEMA["worker"]


@dataclasses.dataclass
class JobSettings:
    """What every job of a worker slot shares: the config file's ``worker`` and ``log_store``
    sections (the consumer passes them; the defaults are the config schema's)."""

    work_dir: str
    host: str
    slot: int
    store: object                   # the opened log store
    store_settings: dict            # the log_store section (the callback opens its own store)
    default_timeout: int = _WORKER["default_timeout"].default
    clone_url: str | None = None    # None: the job playbooks' own default
    flush_interval: float = _WORKER["log_flush_interval"].default
    flush_bytes: int = _WORKER["log_flush_bytes"].default
    upload_timeout: float = _WORKER["upload_timeout"].default
    retry_delay: float = _WORKER["retry_delay"].default
    pexpect_timeout: float = 0.5
    config_path: str | None = None  # handed to job playbooks (the scan reads it)
    reporter: object = None         # job_report.GitHubReporter, or None (no forge section)

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
            self.cancel(job_run.TIMEOUT)

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
            self._settle("requeue", job_run.ERROR, None)
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
            if job_run.is_final(previous):
                LOG.info("job %s: redelivered, but its result (%s) is stored: not running it again", job_id, previous["outcome"])
                self._settle(self._report_finished(previous, "ack"), DUPLICATE, previous)
                return
        if self.github is not None:
            try:
                stale = self.settings.reporter.stale(self.job, self.redelivered)
            except Exception as exc:  # GitHub unreachable: run it; the statuses may lag
                stale = None
                LOG.warning("job %s: cannot read its GitHub status (%s): running it", job_id, exc)
            if stale:
                LOG.info("job %s: not running it: %s", job_id, stale)
                self._settle("ack", STALE, {"outcome": STALE, "reason": stale})
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
            self._settle("requeue", job_run.ERROR, None)
            return
        runner_status, rc, runner_error = self._run_playbook(spool_dir)
        spool = logstore.JobSpool(spool_dir, job_id)
        result, action, ok, error = self._finish(spool, runner_status, rc, runner_error, start)
        self.stored, self.store_error = ok, error
        if not ok:
            LOG.error("job %s: its log folder could not be stored (%s); it is kept in %s", job_id, error, self._keep_unsent(spool))
        if action == "requeue":
            self._infra_pause()
        if action == "ack":
            action = self._report_finished(result, action)
        self._settle(action, result["outcome"], result)

    def _finish(self, spool, runner_status, rc, runner_error, start):
        """Write the final result and store the folder (``job_run.finish``); return
        ``(result, action, stored, store error)``."""
        verdict = job_run.read_verdict(spool)
        appendix = self._runner_output() if verdict is None and self.cancel_reason is None else None
        settings = self.settings
        worker = {"host": settings.host, "slot": settings.slot, "delivery": self.delivery,
                  "runner_status": runner_status, "rc": rc}
        result, ok, error = job_run.finish(
            self.job, spool, settings.store, settings.host_label, start, verdict=verdict, worker=worker,
            note_label="testfleet-worker %s" % settings.host_label, appendix=appendix, deadline=settings.upload_timeout,
            on_error=lambda message: LOG.warning("job %s: log store: %s", self.job["id"], message),
            cancel=self.cancel_reason, timeout=self.timeout, superseded_reason=self.superseded_reason,
            runner_error=runner_error)
        return result, "requeue" if result["retry"] else "ack", ok, error

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
                self.cancel(job_run.SUPERSEDED)
                return

    def _infra_pause(self):
        """Wait a little before an infrastructure error is requeued (no hot retry loop)."""
        if self.cancel_reason not in (job_run.STOP, job_run.SUPERSEDED) and self.settings.retry_delay > 0:
            self._stop_wait.wait(self.settings.retry_delay)

    def _run_playbook(self, spool_dir):
        """Run the playbook; return (runner status, rc, error text or None)."""
        job_id = self.job["id"]
        if not HAS_RUNNER:
            return RUNNER_ERROR, None, "the Python library ansible-runner is not installed"
        playbook = job_run.playbook_for(self.job["kind"])
        if playbook is None:
            return RUNNER_ERROR, None, "no playbook for the job kind %r in %s" % (self.job["kind"], job_run.PLAYBOOK_DIR)
        settings = self.settings
        store = settings.store_settings
        bindir = os.path.dirname(sys.executable)
        collections = [job_run.COLLECTIONS_PATH] + [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
        envvars = {
            "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")]),
            "ANSIBLE_CALLBACKS_ENABLED": job_log.CallbackModule.CALLBACK_NAME,
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(collections),
            "ANSIBLE_LOCAL_TEMP": os.path.join(self.private_dir, "tmp"),
            "ANSIBLE_NOCOLOR": "1",
        }
        # the callback's options (job_run.option_env: the names are those of its DOCUMENTATION)
        envvars.update(job_run.option_env(job_log.DOCUMENTATION, {
            "worker_pid": os.getpid(), "spool_dir": spool_dir, "host_name": settings.host_label,
            "log_store": store.get("url") or logstore.DEFAULT_URL, "flush_interval": settings.flush_interval,
            "flush_bytes": settings.flush_bytes, "endpoint_url": store.get("endpoint_url") or None,
            "public_url": store.get("public_url") or None}))
        if store.get("region"):
            envvars["AWS_DEFAULT_REGION"] = str(store["region"])
        work = os.path.join(self.private_dir, "work")
        os.makedirs(work, mode=0o700)
        extravars = job_run.extra_vars(self.job, settings.host, settings.slot, self.delivery, work,
                                       clone_url=settings.clone_url, config_path=settings.config_path)
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
            return RUNNER_ERROR, None, "ansible-runner could not run the playbook: %s: %s" % (type(exc).__name__, exc)
        return runner.status, runner.rc, None

    def _runner_output(self):
        """The end of ansible-playbook's own output, for the log when the play gave no outcome."""
        path = os.path.join(self.private_dir or "", "artifacts", "run", "stdout")
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, os.path.getsize(path) - 8192))
                tail = handle.read().decode("utf-8", "replace")
        except OSError:
            return None
        if not tail.strip():
            return None
        return "[the end of ansible-playbook's output]\n%s\n" % tail.rstrip()

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
