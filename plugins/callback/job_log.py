# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: job_log
type: notification
short_description: Streams a testfleet job's log to the log store while the job runs
version_added: 0.1.0
author: testfleet developers (@testfleet)
description:
  - Writes the log folder of the job named by the extra vars (the job message's fields, such as
    C(-e @job.json)) to the testfleet log store while the play runs, in a folder named after the
    job's C(id), with C(log) (each task's result and the job's live command output, as plain text),
    C(log.html) (a static page that follows the log and shows the outcome), C(result.json)
    (job, host, start, end, duration, outcome, reason) and C(attachments/).
  - The folder is first written to a local spool directory; a background thread copies it to
    the store every O(flush_interval) seconds or O(flush_bytes) bytes, with retries and
    backoff. A slow or broken store never slows down or fails the play; what could not be sent
    stays in the spool and a warning says where.
  - The values of the job's C(args.secrets) and the output of C(no_log) tasks never reach the
    log, the result or the store.
  - The callback sets the environment variables E(TESTFLEET_JOB_FOLDER) (the local folder),
    E(TESTFLEET_ATTACHMENTS_DIR) (files left there are stored under C(attachments/)) and
    E(TESTFLEET_OUTPUT_FILE) (text appended to it is streamed into the log live) for the tasks
    of the play.
  - A play without a job C(id) in its extra vars is not logged.
requirements:
  - Enabled in the configuration, for example C(ANSIBLE_CALLBACKS_ENABLED=testfleet.infra.job_log).
  - The Python library boto3 for an S3 log store.
options:
  log_store:
    description:
      - Where job folders are stored. V(s3://bucket/prefix), V(file:///directory) or a
        directory path.
      - When unset, the C(log_store) section of O(config) is used; without a config file,
        the directory C(testfleet-logs) in the current directory.
    type: str
    env:
      - name: TESTFLEET_LOG_STORE
    ini:
      - section: testfleet_job_log
        key: log_store
  endpoint_url:
    description: URL of the S3-compatible server of an V(s3://) store (default AWS).
    type: str
    env:
      - name: TESTFLEET_LOG_STORE_ENDPOINT_URL
    ini:
      - section: testfleet_job_log
        key: endpoint_url
  public_url:
    description: Base URL under which the store's job folders are served (shown in the output).
    type: str
    env:
      - name: TESTFLEET_LOG_STORE_PUBLIC_URL
    ini:
      - section: testfleet_job_log
        key: public_url
  config:
    description: A testfleet config file; its C(log_store) section is used when O(log_store) is unset.
    type: path
    env:
      - name: TESTFLEET_CONFIG
    ini:
      - section: testfleet_job_log
        key: config
  spool_dir:
    description: Local directory that holds a copy of each job folder until it is stored.
    type: path
    default: ~/.cache/testfleet/spool
    env:
      - name: TESTFLEET_SPOOL_DIR
    ini:
      - section: testfleet_job_log
        key: spool_dir
  host_name:
    description: The name of this host in C(result.json) (default the host name).
    type: str
    env:
      - name: TESTFLEET_HOST
  flush_interval:
    description: Seconds between two copies of the growing log to the store.
    type: float
    default: 2.0
    env:
      - name: TESTFLEET_LOG_FLUSH_INTERVAL
    ini:
      - section: testfleet_job_log
        key: flush_interval
  flush_bytes:
    description: Copy the log earlier once this many new bytes are waiting.
    type: int
    default: 65536
    env:
      - name: TESTFLEET_LOG_FLUSH_BYTES
    ini:
      - section: testfleet_job_log
        key: flush_bytes
  final_flush_timeout:
    description: Seconds the end of the play waits for the last copy to the store.
    type: float
    default: 15.0
    env:
      - name: TESTFLEET_LOG_FINAL_FLUSH_TIMEOUT
    ini:
      - section: testfleet_job_log
        key: final_flush_timeout
  worker_pid:
    description:
      - Set by C(testfleet-worker). The worker then stores C(result.json) and the attachments
        itself after the playbook, and the job is stopped when the worker process is gone
        (killed), because the broker hands the job to another worker.
    type: int
    env:
      - name: TESTFLEET_WORKER_PID
notes:
  - A task tagged C(testfleet_infra) that fails, or an unreachable host, makes the outcome
    C(error) (an infrastructure problem, retried by the worker) instead of C(failure).
"""

import codecs
import os
import signal
import socket
import threading
import time

from ansible.plugins.callback import CallbackBase

from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore import store as logstore

INFRA_TAG = "testfleet_infra"
JOB_FIELDS = ("version", "id", "kind", "repo", "sha", "ref", "pull", "context", "timeout", "report", "args")


def _native(value):
    """Plain Python data from Ansible's (possibly tagged) variable values."""
    if isinstance(value, dict):
        return dict((str(k), _native(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_native(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _part(result, name):
    value = getattr(result, name, None)
    if value is None:
        value = getattr(result, "_" + name)
    return value


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


class CallbackModule(CallbackBase):
    """Streams the job's log folder to the testfleet log store."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "testfleet.infra.job_log"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super(CallbackModule, self).__init__(display=display)
        self.job = None
        self.disabled_reason = None
        self.store = None
        self.spool = None
        self.shipper = None
        self.tail = None
        self.redactor = logstore.Redactor()
        self.start = None
        self.first_task = None
        self.task_started = {}
        self.failures = []
        self.host = None
        self.worker_mode = False
        self._store_warned = False
        self._done = False

    # --- set-up ---------------------------------------------------------------------------------
    def _store_settings(self):
        url = self.get_option("log_store")
        settings = {"url": url, "endpoint_url": self.get_option("endpoint_url"),
                    "public_url": self.get_option("public_url")}
        config_path = self.get_option("config")
        if not url and config_path:
            from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
            section = config_lib.load(config_path).log_store
            settings = dict((k, section.get(k)) for k in ("url", "endpoint_url", "public_url"))
            for key in ("region",):
                if section.get(key):
                    settings[key] = section[key]
        if not settings["url"]:
            settings["url"] = os.path.abspath("testfleet-logs")
        return settings

    def _begin(self, play):
        extra = _native(play.get_variable_manager().extra_vars or {})
        job = dict((k, extra[k]) for k in JOB_FIELDS if k in extra)
        if not job.get("id"):
            self.disabled_reason = "no job id in the extra vars (run it with -e @job.json)"
            return
        try:
            logstore.check_job_id(job["id"])
        except logstore.LogStoreError as exc:
            self.disabled_reason = str(exc)
            self._display.warning("testfleet.infra.job_log: %s: the job's log is not stored" % exc)
            return
        self.job = job
        self.redactor = logstore.Redactor(logstore.job_secrets(job))
        self.start = time.time()
        self.host = self.get_option("host_name") or socket.gethostname()
        worker_pid = self.get_option("worker_pid")
        self.worker_mode = bool(worker_pid)
        self.spool = logstore.JobSpool(self.get_option("spool_dir"), job["id"])
        # a rerun of the same job on this host starts a new log
        for name in (logstore.LOG, logstore.RESULT, logstore.JobSpool.OUTPUT):
            try:
                os.unlink(os.path.join(self.spool.path, name))
            except OSError:
                pass
        os.environ["TESTFLEET_JOB_FOLDER"] = self.spool.path
        os.environ["TESTFLEET_ATTACHMENTS_DIR"] = self.spool.attachments_dir
        os.environ["TESTFLEET_OUTPUT_FILE"] = self.spool.output_path
        self.tail = OutputTail(self.spool.output_path, self.redactor, self._append)
        try:
            self.store = logstore.open_store(**self._store_settings())
        except Exception as exc:  # a broken store never fails the job
            self._warn_store("cannot open the log store: %s" % exc)
            self.store = None
        self._append("testfleet job %s (%s) on %s, started %s\n" % (
            job["id"], job.get("kind", "?"), self.host, logstore.utc_now_iso(self.start)))
        for name in sorted(job):
            if name not in ("id", "args", "report"):
                self._append("  %s: %s\n" % (name, self.redactor.text(str(job[name]))))
        if self.store is not None:
            self.shipper = logstore.Shipper(
                self.store, self.spool, interval=self.get_option("flush_interval"),
                flush_bytes=self.get_option("flush_bytes"), on_error=self._warn_store,
                tick=self.tail.poll, redactor=self.redactor)
            self.shipper.put(logstore.VIEWER, logstore.VIEWER_HTML.encode("utf-8"))
            self.shipper.put(logstore.RESULT, logstore.result_bytes(self._result("running")))
            self.shipper.start()
        if worker_pid:
            self._watch_worker(int(worker_pid))

    def _watch_worker(self, worker_pid):
        """Stop this playbook when the worker that started it is gone (SIGKILL, crash)."""
        if os.getppid() != worker_pid:
            self._display.warning("testfleet.infra.job_log: the worker pid %d is not this process's parent: "
                                  "the job is not stopped if the worker dies" % worker_pid)
            return

        def watch():
            while os.getppid() == worker_pid:
                time.sleep(0.5)
            self._append("\n[testfleet: the worker (pid %d) is gone: this run stops here; the broker "
                         "gives the job to another worker]\n" % worker_pid)
            if self.shipper is not None:
                self.shipper.flush(force=True)
            # ansible-runner started ansible-playbook as a process group leader (its own session)
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="testfleet-worker-watch", daemon=True).start()

    def _warn_store(self, message):
        if not self._store_warned:
            self._store_warned = True
            self._display.warning("testfleet.infra.job_log: the log store fails (%s); retrying in the "
                                  "background, the local copy is in %s" % (message, self.spool.path if self.spool else "?"))

    # --- writing --------------------------------------------------------------------------------
    def _append(self, text):
        if self.spool is None:
            return
        written = self.spool.append(self.redactor.text(text))
        if self.shipper is not None:
            self.shipper.poke(written)

    def _stamp(self):
        return time.strftime("%H:%M:%S", time.gmtime())

    def _result(self, outcome, reason=None, retry=False, end=None):
        result = {
            "job": logstore.public_job(self.job),
            "host": self.host,
            "start": logstore.utc_now_iso(self.start),
            "outcome": outcome,
            "reason": self.redactor.text(reason) if reason else None,
            "retry": retry,
        }
        if self.first_task is not None:
            result["first_task"] = logstore.utc_now_iso(self.first_task)
        if end is not None:
            result["end"] = logstore.utc_now_iso(end)
            result["duration"] = round(end - self.start, 3)
        if self.store is not None:
            result["log_url"] = self.store.location(self.job["id"], logstore.VIEWER)
        return result

    def _describe(self, result, status):
        host = _part(result, "host").get_name()
        data = _native(_part(result, "result"))
        task = _part(result, "task")
        started = self.task_started.get(task._uuid)
        took = " (%.1f s)" % (time.time() - started) if started else ""
        item = ""
        if "_ansible_item_label" in data or "item" in data:
            label = data.get("_ansible_item_label", data.get("item"))
            item = " (item=%s)" % (label if not data.get("_ansible_no_log") else "hidden: no_log")
        lines = ["%s: [%s]%s%s" % (status, host, item, took)]
        if data.get("_ansible_no_log") or data.get("censored"):
            lines.append("  (output hidden: no_log)")
            return "\n".join(lines) + "\n"
        if data.get("msg") and data.get("msg") != "All items completed":
            lines.append("  msg: %s" % (data["msg"] if isinstance(data["msg"], str) else data["msg"],))
        if "rc" in data and (status == "failed" or data.get("rc")):
            lines.append("  rc: %s" % data["rc"])
        for stream in ("stdout", "stderr"):
            text = data.get(stream)
            if text:
                lines.append("  %s:" % stream)
                lines.extend("    " + line for line in str(text).splitlines())
        if status == "failed" and data.get("exception") and not data.get("msg"):
            lines.append("  exception: %s" % str(data["exception"]).strip().splitlines()[-1])
        return "\n".join(lines) + "\n"

    def _on_result(self, result, status):
        if self.job is None:
            return
        self.tail.poll()
        self._append(self._describe(result, status))

    def _failure(self, result, status):
        task = _part(result, "task")
        data = _native(_part(result, "result"))
        if data.get("_ansible_no_log") or data.get("censored"):
            detail = "output hidden (no_log)"
        else:
            detail = data.get("msg") or ("rc %s" % data["rc"] if "rc" in data else status)
            if "rc" in data and "rc" not in str(detail):
                detail = "%s (rc %s)" % (detail, data["rc"])
        tags = list(getattr(task, "tags", None) or [])
        infra = status == "unreachable" or INFRA_TAG in tags
        verb = "could not reach the host" if status == "unreachable" else "failed"
        first_line = str(detail).strip().splitlines()[0] if str(detail).strip() else status
        reason = "task '%s' %s: %s" % (task.get_name().strip(), verb, first_line)
        self.failures.append((infra, reason))

    # --- events ---------------------------------------------------------------------------------
    def v2_playbook_on_play_start(self, play):
        if self.job is None and self.disabled_reason is None:
            self._begin(play)
        if self.job is not None:
            self._append("\n%s PLAY [%s]\n" % (self._stamp(), play.get_name().strip()))

    def v2_playbook_on_task_start(self, task, is_conditional):
        if self.job is None:
            return
        now = time.time()
        if self.first_task is None:
            self.first_task = now
        self.task_started[task._uuid] = now
        self.tail.poll()
        self._append("\n%s TASK [%s]\n" % (self._stamp(), task.get_name().strip()))

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_runner_on_ok(self, result):
        data = _part(result, "result")
        self._on_result(result, "changed" if data.get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._on_result(result, "failed")
        if self.job is not None:
            if ignore_errors:
                self._append("  (ignored)\n")
            else:
                self._failure(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._on_result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._on_result(result, "unreachable")
        if self.job is not None:
            self._failure(result, "unreachable")

    def v2_runner_item_on_ok(self, result):
        data = _part(result, "result")
        self._on_result(result, "changed" if data.get("changed") else "ok")

    def v2_runner_item_on_failed(self, result):
        self._on_result(result, "failed")

    def v2_runner_item_on_skipped(self, result):
        self._on_result(result, "skipped")

    def v2_runner_retry(self, result):
        if self.job is not None:
            data = _part(result, "result")
            self._append("  retrying (%s of %s)\n" % (data.get("attempts"), data.get("retries")))

    def v2_playbook_on_no_hosts_matched(self):
        if self.job is not None:
            self._append("no hosts matched\n")

    def v2_playbook_on_stats(self, stats):
        if self.job is None or self._done:
            return
        self._done = True
        self.tail.poll(final=True)
        end = time.time()
        failed = unreachable = 0
        self._append("\n")
        for host in sorted(stats.processed):
            summary = stats.summarize(host)
            failed += summary.get("failures", 0)
            unreachable += summary.get("unreachable", 0)
            self._append("%s: ok=%d changed=%d failed=%d unreachable=%d skipped=%d rescued=%d ignored=%d\n" % (
                host, summary.get("ok", 0), summary.get("changed", 0), summary.get("failures", 0),
                summary.get("unreachable", 0), summary.get("skipped", 0), summary.get("rescued", 0),
                summary.get("ignored", 0)))
        if failed or unreachable:
            infra, reason = self.failures[-1] if self.failures else (bool(unreachable), "the play failed")
            outcome, retry = ("error", True) if infra else ("failure", False)
        else:
            outcome, reason, retry = "success", None, False
        result = self._result(outcome, reason, retry, end)
        self._append("\n%s outcome: %s%s (%.1f s)\n" % (self._stamp(), outcome, ": " + reason if reason else "", end - self.start))
        skipped = []
        if self.shipper is not None and not self.worker_mode:
            skipped = self.shipper.put_attachments()
        for line in skipped:
            self._append("attachment not stored: %s\n" % line)
        stored = False
        if self.shipper is not None:
            if not self.worker_mode:
                self.shipper.put(logstore.RESULT, logstore.result_bytes(result))
            stored = self.shipper.close(self.get_option("final_flush_timeout"))
            result["stored_log_bytes"] = self.shipper.shipped if stored else None
        self.spool.write(logstore.RESULT, logstore.result_bytes(result))
        if self.worker_mode:
            return
        if stored:
            self._display.display("testfleet job log: %s (outcome: %s)" % (self.store.location(self.job["id"], logstore.VIEWER), outcome))
        else:
            self._display.warning("testfleet.infra.job_log: the job's log folder could not be stored%s; "
                                  "the local copy is %s" % (
                                      ": %s" % self.shipper.last_error if self.shipper and self.shipper.last_error else "",
                                      self.spool.path))
