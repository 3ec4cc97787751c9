# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The job-run contract: what testfleet-worker, a job's playbook and the ``job_log`` callback agree on.

A job runs in three places: the worker (``programs/worker/job.py``) starts ansible-runner; the
playbook ``playbooks/jobs/<kind>.yml`` (:func:`playbook_for`) does the work; the callback
``testfleet.infra.job_log``, inside ansible-playbook, writes the job's log folder while it runs.
Every fact they share is defined here, once:

- **Extra vars** of a job playbook: the job message's fields (``jobs.FIELDS``), and under a
  worker :func:`extra_vars`: ``testfleet_worker`` ({host, slot, delivery}), ``testfleet_host``,
  ``testfleet_work_dir``, ``testfleet_clone_url_template``, ``testfleet_config``.
- **Callback options** (the worker sets them through the environment names the callback's
  DOCUMENTATION gives them: :func:`option_env`).
- **Environment of the play's tasks** (:data:`PLAY_ENV`, set by :meth:`PlayLog.start` in
  ansible-playbook's own environment, which its local tasks inherit): :data:`ENV_JOB_FOLDER`,
  :data:`ENV_ATTACHMENTS_DIR` (files left there are stored under ``attachments/``),
  :data:`ENV_OUTPUT_FILE` (text appended to it is streamed into the log: :class:`OutputTail`).
- **Outcome words** (``outcome`` in ``result.json``; from ``module_utils/statuses.py``, since a
  module knows them too): ``running`` (the only non-final one), ``success``, ``failure``,
  ``error`` (infrastructure or timeout; ``"retry": true`` when it was requeued), ``superseded``.
  A task tagged :data:`INFRA_TAG` that fails, or an unreachable host, makes ``error``.
- **The result** ``result.json``: ``job`` (secrets hidden), ``host``, ``start``, ``outcome``,
  ``reason``, ``retry``, ``first_task``, ``end``, ``duration``, ``log_url``, and under a worker
  ``worker`` ({host, slot, delivery, runner_status, rc}). Times are :func:`utc_now_iso` text.

Who writes ``result.json``: :meth:`PlayLog.start` ships a ``running`` one; the final one is
written by :func:`finish` alone. Without a worker the callback calls it at the end of the
play. Under a worker (option ``worker_pid``) the callback leaves the play's own verdict in the
spool (:data:`PLAY_END`, a private file) and the worker calls :func:`finish` once the playbook
ended or was stopped, with what only it knows (timeout, stop, superseded, runner status).
:func:`decide` is the one place that turns all of it into an outcome.

Watchdog: under a worker, the play stops itself (kills its process group) when the worker that
started it is gone (:func:`watch_worker`), since the broker hands the job to another worker.
"""

from __future__ import annotations

import codecs
import datetime
import json
import os
import signal
import threading
import time

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils.statuses import (
    ERROR, FAILURE, FINISHED, OUTCOMES, RUNNING, SUCCESS, SUPERSEDED)
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore

# --- where the job playbooks are ------------------------------------------------------------------
# This file is plugins/plugin_utils/job_run.py of the collection: three folders up is its root.
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the directory holding ansible_collections/testfleet/infra: what ANSIBLE_COLLECTIONS_PATH names
COLLECTIONS_PATH = os.path.dirname(os.path.dirname(os.path.dirname(COLLECTION_ROOT)))
PLAYBOOK_DIR = os.path.join(COLLECTION_ROOT, "playbooks", "jobs")

INFRA_TAG = "testfleet_infra"
PLAY_END = ".play-end.json"     # the play's verdict, in the spool, for the worker (never shipped)

ENV_JOB_FOLDER = "TESTFLEET_JOB_FOLDER"
ENV_ATTACHMENTS_DIR = "TESTFLEET_ATTACHMENTS_DIR"
ENV_OUTPUT_FILE = "TESTFLEET_OUTPUT_FILE"
PLAY_ENV = (ENV_JOB_FOLDER, ENV_ATTACHMENTS_DIR, ENV_OUTPUT_FILE)

# what the meaning of each outcome word is (docs, the viewer's legend)
OUTCOME_MEANINGS = {
    RUNNING: "the job is running",
    SUCCESS: "the job's playbook succeeded",
    FAILURE: "the job ran and failed (a failing test is a result)",
    ERROR: "an infrastructure error or a timeout",
    SUPERSEDED: "the pull request moved on: the run was stopped",
}
if set(OUTCOME_MEANINGS) != set(OUTCOMES):  # pragma: no cover - a word added in statuses.py needs its meaning here
    raise AssertionError("job_run.OUTCOME_MEANINGS must describe statuses.OUTCOMES")

# why a worker cancels a job's playbook (the third reason is the outcome word SUPERSEDED)
TIMEOUT = "timeout"
STOP = "stop"


def playbook_for(kind):
    """The playbook of a job kind, or None when this collection has none."""
    path = os.path.join(PLAYBOOK_DIR, "%s.yml" % kind)
    return path if os.path.isfile(path) else None


def extra_vars(job, host, slot, delivery, work_dir, clone_url=None, config_path=None):
    """The extra vars of a job playbook run by a worker: the job's fields and the worker's."""
    variables = dict(job)
    variables.update({
        "testfleet_worker": {"host": host, "slot": slot, "delivery": delivery},
        "testfleet_host": "%s/%s" % (host, slot),
        "testfleet_work_dir": work_dir,
    })
    if clone_url:
        variables["testfleet_clone_url_template"] = clone_url
    if config_path:
        variables["testfleet_config"] = config_path
    return variables


def job_from_vars(variables):
    """The job message's fields among a play's extra vars."""
    return dict((k, variables[k]) for k in jobs.FIELDS if k in variables)


def option_env(documentation, values):
    """The environment that sets a plugin's options ``values`` (name -> value; None: unset).

    The names are those of the plugin's DOCUMENTATION (``options.<name>.env[0].name``): the
    callback's documentation is the one place that names its environment variables.
    """
    options = files.load_yaml(documentation, "the callback's DOCUMENTATION")["options"]
    env = {}
    for name, value in values.items():
        if value is not None:
            env[options[name]["env"][0]["name"]] = str(value)
    return env


# --- the result ----------------------------------------------------------------------------------
def utc_now_iso(ts=None):
    """``2026-01-02T03:04:05.678901Z`` for ``ts`` (seconds since the epoch, default now)."""
    moment = datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text):
    """Seconds since the epoch of a timestamp written by :func:`utc_now_iso`."""
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def is_final(result):
    """Whether a stored result is final (the job need not run again)."""
    if not isinstance(result, dict):
        return False
    return result.get("outcome") in FINISHED or (result.get("outcome") == ERROR and not result.get("retry"))


def status_kind(result):
    """The GitHub status kind that reports a final result (an unknown outcome is an error)."""
    outcome = result.get("outcome")
    return outcome if outcome in FINISHED or outcome == ERROR else ERROR


def running_result(job, host, start, log_url=None):
    """The ``result.json`` of a job that runs (not final)."""
    result = {"job": logstore.public_job(job), "host": host, "start": utc_now_iso(start),
              "outcome": RUNNING, "reason": None, "retry": False}
    if log_url:
        result["log_url"] = log_url
    return result


def decide(verdict, cancel=None, timeout=None, superseded_reason=None, runner_error=None, runner_status=None, rc=None):
    """The outcome of a job: ``(outcome, reason, retry, note)``; ``note`` (or None) is for the log.

    ``verdict`` is the play's own (``{"outcome", "reason", ...}``, None when the play gave none:
    killed, or ansible-playbook failed before its end); ``cancel`` why the worker stopped it
    (:data:`TIMEOUT`, :data:`STOP`, :data:`SUPERSEDED`). ``retry`` means: requeue the job.
    """
    if cancel == TIMEOUT:
        reason = "timed out after %d s" % timeout
        return ERROR, reason, False, reason
    if cancel == SUPERSEDED:
        return SUPERSEDED, superseded_reason, False, "superseded: %s" % superseded_reason
    if cancel == STOP:
        reason = "the worker was stopped during the job; the job was requeued"
        return ERROR, reason, True, reason
    outcome = verdict.get("outcome") if isinstance(verdict, dict) else None
    if outcome in FINISHED:
        return outcome, verdict.get("reason"), False, None
    if outcome == ERROR:
        return ERROR, verdict.get("reason"), True, "infrastructure error, the job is requeued: %s" % verdict.get("reason")
    reason = runner_error or "the playbook ended without an outcome (ansible-runner status %s, rc %s)" % (runner_status, rc)
    return ERROR, reason, True, reason + "; the job is requeued"


def read_verdict(spool):
    """The verdict the play left in ``spool`` (a JobSpool) for the worker, or None."""
    data = spool.read(PLAY_END)
    try:
        verdict = json.loads(data.decode("utf-8")) if data else None
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None


def finish(job, spool, store, host, start, verdict=None, worker=None, note_label="testfleet", appendix=None,
           shipper=None, deadline=15.0, on_error=None, **decision):
    """Write the job's final ``result.json`` and store its folder; the only writer of a final result.

    ``verdict``: the play's; ``decision``: the other keywords of :func:`decide`. ``worker``:
    the worker's part of the result ({host, slot, delivery, runner_status, rc}), if any. A note
    on the outcome goes to the log as ``[<note_label>: note]``, then ``appendix`` (text). With a
    running ``shipper`` (the callback's) the attachments and the result go through it; else the
    whole folder is uploaded (``logstore.upload_folder``). ``deadline``: seconds to store.
    Returns ``(result, stored, error)``; never raises for store failures.
    """
    redactor = logstore.Redactor(logstore.job_secrets(job))
    end = time.time()
    verdict = verdict if isinstance(verdict, dict) else {}
    decision.setdefault("runner_status", (worker or {}).get("runner_status"))
    decision.setdefault("rc", (worker or {}).get("rc"))
    outcome, reason, retry, note = decide(verdict or None, **decision)
    began = parse_iso(verdict["start"]) if verdict.get("start") else start
    result = {"job": logstore.public_job(job), "host": verdict.get("host") or host, "start": utc_now_iso(began),
              "outcome": outcome, "reason": reason, "retry": retry,
              "end": utc_now_iso(end), "duration": round(end - began, 3)}
    if verdict.get("first_task"):
        result["first_task"] = verdict["first_task"]
    if worker is not None:
        result["worker"] = dict(worker)
    if store is not None:
        result["log_url"] = store.location(job["id"], logstore.VIEWER)
    result = redactor.data(result)
    if note and worker is not None:
        spool.append(redactor.text("\n[%s: %s]\n" % (note_label, note)))
    if appendix:
        spool.append(redactor.text(appendix))
    data = logstore.result_bytes(result)
    stored, error = False, None
    if shipper is not None:
        for line in shipper.put_attachments():
            shipper.poke(spool.append(redactor.text("attachment not stored: %s\n" % line)))
        shipper.put(logstore.RESULT, data)
        stored = shipper.close(deadline)
        error = None if stored else shipper.last_error
    spool.write(logstore.RESULT, data)
    if shipper is None and store is not None:
        stored, error = logstore.upload_folder(store, spool, result, deadline=deadline, redactor=redactor,
                                               on_error=on_error)
    return result, stored, error


# --- inside the playbook: the live output and the watchdog --------------------------------------
class OutputTail:
    """Follows the job's live output file and appends the new text, redacted, to the log.

    Text that could be the beginning of a secret is held back until the next read decides, so
    a secret written in two pieces is still found. At the end (``final``) an unfinished last
    line is ended.
    """

    def __init__(self, path, redactor, sink):
        self.path = path
        self.redactor = redactor
        self.sink = sink
        self.offset = 0
        self.pending = ""
        self.at_line_start = True
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.lock = threading.Lock()

    def _held(self, text):
        """Length of the longest end of ``text`` that is the beginning of a secret."""
        longest = min(len(text), max([len(s) for s in self.redactor.secrets] or [1]) - 1)
        for size in range(longest, 0, -1):
            end = text[-size:]
            if any(secret.startswith(end) for secret in self.redactor.secrets):
                return size
        return 0

    def _emit(self, text):
        if text:
            self.sink(self.redactor.text(text))
            self.at_line_start = text.endswith("\n")

    def poll(self, final=False):
        with self.lock:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(self.offset)
                    data = handle.read(4 * 1024 * 1024)
            except OSError:
                data = b""
            self.offset += len(data)
            self.pending += self.decoder.decode(data, final=final)
            if final:
                text, self.pending = self.pending, ""
                self._emit(text)
                if not self.at_line_start:
                    self._emit("\n")
                return
            cut = len(self.pending) - self._held(self.pending)
            if self.redactor:
                for match in self.redactor._pattern.finditer(self.pending):
                    if match.start() < cut < match.end():
                        cut = match.end()
            text, self.pending = self.pending[:cut], self.pending[cut:]
            self._emit(text)


def watch_worker(worker_pid, on_gone):
    """Stop this process (and its process group) once the worker ``worker_pid`` is gone.

    Returns False (and watches nothing) when the worker is not this process's parent. Before
    the kill, ``on_gone()`` may write a last word to the log and flush it.
    """
    if os.getppid() != worker_pid:
        return False

    def watch():
        while os.getppid() == worker_pid:
            time.sleep(0.5)
        try:
            on_gone()
        finally:
            # ansible-runner started ansible-playbook as a process group leader (its own session)
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="testfleet-worker-watch", daemon=True).start()
    return True


class PlayLog:
    """A job's log folder while its playbook runs, in ansible-playbook: what the callback drives.

    :meth:`begin` at the first play (clears what a previous run of the job on this host left,
    sets :data:`PLAY_ENV`, opens the store, ships a ``running`` result, starts the watchdog
    under a worker); :meth:`append` what the hooks write; :meth:`end` with the play's stats.
    ``warn(message)`` says what goes wrong (a broken store never fails the play).
    """

    def __init__(self, job, host, spool_dir, worker_pid=None, flush_interval=2.0, flush_bytes=65536,
                 final_flush_timeout=15.0, warn=None):
        self.job = job
        self.host = host
        self.worker_pid = int(worker_pid) if worker_pid else None
        self.flush_interval = flush_interval
        self.flush_bytes = flush_bytes
        self.final_flush_timeout = final_flush_timeout
        self.warn = warn or (lambda message: None)
        self.redactor = logstore.Redactor(logstore.job_secrets(job))
        self.started = time.time()
        self.first_task = None
        self.failures = []          # (infrastructure?, reason) of each failed task
        self.store = None
        self.shipper = None
        self.spool = logstore.JobSpool(spool_dir, job["id"])
        self.tail = OutputTail(self.spool.output_path, self.redactor, self.append)
        self._store_warned = False

    def play_env(self):
        """The environment the play's tasks get (:data:`PLAY_ENV`)."""
        return {ENV_JOB_FOLDER: self.spool.path, ENV_ATTACHMENTS_DIR: self.spool.attachments_dir,
                ENV_OUTPUT_FILE: self.spool.output_path}

    def begin(self, store_settings):
        """Start the log: ``store_settings`` are ``logstore.open_store``'s keywords."""
        for name in (logstore.LOG, logstore.RESULT, logstore.JobSpool.OUTPUT, PLAY_END):
            files.remove_quietly(os.path.join(self.spool.path, name))
        os.environ.update(self.play_env())
        try:
            self.store = logstore.open_store(**store_settings)
        except Exception as exc:  # a broken store never fails the job
            self._warn_store("cannot open the log store: %s" % exc)
        job = self.job
        self.append("testfleet job %s (%s) on %s, started %s\n" % (
            job["id"], job.get("kind", "?"), self.host, utc_now_iso(self.started)))
        for name in sorted(job):
            if name not in ("id", "args", "report"):
                self.append("  %s: %s\n" % (name, self.redactor.text(str(job[name]))))
        if self.store is not None:
            self.shipper = logstore.Shipper(
                self.store, self.spool, interval=self.flush_interval, flush_bytes=self.flush_bytes,
                on_error=self._warn_store, tick=self.tail.poll, redactor=self.redactor)
            self.shipper.put(logstore.VIEWER, logstore.viewer_bytes())
            log_url = self.store.location(job["id"], logstore.VIEWER)
            self.shipper.put(logstore.RESULT, logstore.result_bytes(running_result(job, self.host, self.started, log_url)))
            self.shipper.start()
        if self.worker_pid and not watch_worker(self.worker_pid, self._worker_gone):
            self.warn("the worker pid %d is not this process's parent: the job is not stopped if the worker dies"
                      % self.worker_pid)

    def _worker_gone(self):
        self.append("\n[testfleet: the worker (pid %d) is gone: this run stops here; the broker "
                    "gives the job to another worker]\n" % self.worker_pid)
        if self.shipper is not None:
            self.shipper.flush(force=True)

    def _warn_store(self, message):
        if not self._store_warned:
            self._store_warned = True
            self.warn("the log store fails (%s); retrying in the background, the local copy is in %s"
                      % (message, self.spool.path))

    def append(self, text):
        """Append ``text`` (redacted here) to the log."""
        written = self.spool.append(self.redactor.text(text))
        if self.shipper is not None:
            self.shipper.poke(written)

    def task_started(self):
        if self.first_task is None:
            self.first_task = time.time()
        self.tail.poll()

    def task_failed(self, reason, infra):
        """A task failed for good (``infra``: unreachable, or tagged :data:`INFRA_TAG`)."""
        self.failures.append((infra, reason))

    def end(self, summaries):
        """The play ended; ``summaries``: [(host, stats summary)]. Returns ``(ok, message)``
        for the person who ran it, or None under a worker (the worker finishes the job)."""
        self.tail.poll(final=True)
        failed = unreachable = 0
        self.append("\n")
        for host, summary in summaries:
            failed += summary.get("failures", 0)
            unreachable += summary.get("unreachable", 0)
            self.append("%s: %s\n" % (host, " ".join("%s=%d" % (key, summary.get(name, 0)) for key, name in (
                ("ok", "ok"), ("changed", "changed"), ("failed", "failures"), ("unreachable", "unreachable"),
                ("skipped", "skipped"), ("rescued", "rescued"), ("ignored", "ignored")))))
        if failed or unreachable:
            infra, reason = self.failures[-1] if self.failures else (bool(unreachable), "the play failed")
            outcome, retry = (ERROR, True) if infra else (FAILURE, False)
        else:
            outcome, reason, retry = SUCCESS, None, False
        verdict = {"outcome": outcome, "reason": self.redactor.text(reason) if reason else None, "retry": retry,
                   "host": self.host, "start": utc_now_iso(self.started)}
        if self.first_task is not None:
            verdict["first_task"] = utc_now_iso(self.first_task)
        self.append("\n%s outcome: %s%s (%.1f s)\n" % (
            time.strftime("%H:%M:%S", time.gmtime()), outcome, ": " + reason if reason else "", time.time() - self.started))
        if self.worker_pid:
            if self.shipper is not None:
                self.shipper.close(self.final_flush_timeout)
            self.spool.write(PLAY_END, logstore.result_bytes(verdict))
            return None
        dummy, stored, error = finish(self.job, self.spool, self.store, self.host, self.started, verdict=verdict,
                                      shipper=self.shipper, deadline=self.final_flush_timeout)
        if stored:
            return True, "testfleet job log: %s (outcome: %s)" % (self.store.location(self.job["id"], logstore.VIEWER), outcome)
        return False, "the job's log folder could not be stored%s; the local copy is %s" % (
            ": %s" % error if error else "", self.spool.path)
