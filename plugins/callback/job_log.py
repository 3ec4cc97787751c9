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
    of the play (their names are defined in the collection's C(plugin_utils/job_run.py)).
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
      - Set by C(testfleet-worker). The worker then writes the final C(result.json) and stores
        the attachments itself after the playbook (the callback leaves it the play's outcome),
        and the job is stopped when the worker process is gone (killed), because the broker
        hands the job to another worker.
    type: int
    env:
      - name: TESTFLEET_WORKER_PID
notes:
  - A task tagged C(testfleet_infra) that fails, or an unreachable host, makes the outcome
    C(error) (an infrastructure problem, retried by the worker) instead of C(failure).
"""

import os
import socket
import time

from ansible.plugins.callback import CallbackBase

from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore

WARNING_PREFIX = "testfleet.infra.job_log: "


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


def _hidden(data):
    return data.get("_ansible_no_log") or data.get("censored")


def describe(status, host, data, took=None):
    """The log text of one task result (``data``: the result as plain data)."""
    item = ""
    if "_ansible_item_label" in data or "item" in data:
        label = data.get("_ansible_item_label", data.get("item"))
        item = " (item=%s)" % (label if not data.get("_ansible_no_log") else "hidden: no_log")
    lines = ["%s: [%s]%s%s" % (status, host, item, " (%.1f s)" % took if took is not None else "")]
    if _hidden(data):
        lines.append("  (output hidden: no_log)")
        return "\n".join(lines) + "\n"
    if data.get("msg") and data.get("msg") != "All items completed":
        lines.append("  msg: %s" % (data["msg"],))
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


def failure_reason(task_name, status, data):
    """Why the job failed, from the task result that failed it."""
    if _hidden(data):
        detail = "output hidden (no_log)"
    else:
        detail = data.get("msg") or ("rc %s" % data["rc"] if "rc" in data else status)
        if "rc" in data and "rc" not in str(detail):
            detail = "%s (rc %s)" % (detail, data["rc"])
    verb = "could not reach the host" if status == "unreachable" else "failed"
    first_line = str(detail).strip().splitlines()[0] if str(detail).strip() else status
    return "task '%s' %s: %s" % (task_name.strip(), verb, first_line)


class CallbackModule(CallbackBase):
    """Streams the job's log folder to the testfleet log store (see ``plugin_utils/job_run.py``)."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "testfleet.infra.job_log"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None):
        super(CallbackModule, self).__init__(display=display)
        self.run = None             # job_run.PlayLog once the first play started with a job id
        self.disabled_reason = None
        self.task_started = {}
        self._done = False

    @property
    def job(self):
        return self.run.job if self.run is not None else None

    def _warn(self, message):
        self._display.warning(WARNING_PREFIX + message)

    def _store_settings(self):
        url = self.get_option("log_store")
        settings = {"url": url, "endpoint_url": self.get_option("endpoint_url"),
                    "public_url": self.get_option("public_url")}
        config_path = self.get_option("config")
        if not url and config_path:
            from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
            section = config_lib.load(config_path).log_store
            settings = dict((k, section.get(k)) for k in ("url", "endpoint_url", "public_url"))
            if section.get("region"):
                settings["region"] = section["region"]
        if not settings["url"]:
            settings["url"] = os.path.abspath("testfleet-logs")
        return settings

    def _begin(self, play):
        job = job_run.job_from_vars(_native(play.get_variable_manager().extra_vars or {}))
        if not job.get("id"):
            self.disabled_reason = "no job id in the extra vars (run it with -e @job.json)"
            return
        try:
            logstore.check_job_id(job["id"])
        except logstore.LogStoreError as exc:
            self.disabled_reason = str(exc)
            self._warn("%s: the job's log is not stored" % exc)
            return
        self.run = job_run.PlayLog(
            job, self.get_option("host_name") or socket.gethostname(), self.get_option("spool_dir"),
            worker_pid=self.get_option("worker_pid"), flush_interval=self.get_option("flush_interval"),
            flush_bytes=self.get_option("flush_bytes"), final_flush_timeout=self.get_option("final_flush_timeout"),
            warn=self._warn)
        self.run.begin(self._store_settings())

    def _append(self, text):
        if self.run is not None:
            self.run.append(text)

    @staticmethod
    def _stamp():
        return time.strftime("%H:%M:%S", time.gmtime())

    def _on_result(self, result, status):
        if self.run is None:
            return
        task = _part(result, "task")
        started = self.task_started.get(task._uuid)
        self.run.tail.poll()
        self.run.append(describe(status, _part(result, "host").get_name(), _native(_part(result, "result")),
                                 time.time() - started if started else None))

    def _failure(self, result, status):
        task = _part(result, "task")
        infra = status == "unreachable" or job_run.INFRA_TAG in list(getattr(task, "tags", None) or [])
        self.run.task_failed(failure_reason(task.get_name(), status, _native(_part(result, "result"))), infra)

    # --- hooks ----------------------------------------------------------------------------------
    def v2_playbook_on_play_start(self, play):
        if self.run is None and self.disabled_reason is None:
            self._begin(play)
        self._append("\n%s PLAY [%s]\n" % (self._stamp(), play.get_name().strip()))

    def v2_playbook_on_task_start(self, task, is_conditional):
        if self.run is None:
            return
        self.task_started[task._uuid] = time.time()
        self.run.task_started()
        self.run.append("\n%s TASK [%s]\n" % (self._stamp(), task.get_name().strip()))

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_runner_on_ok(self, result):
        self._on_result(result, "changed" if _part(result, "result").get("changed") else "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._on_result(result, "failed")
        if self.run is not None:
            if ignore_errors:
                self.run.append("  (ignored)\n")
            else:
                self._failure(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._on_result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._on_result(result, "unreachable")
        if self.run is not None:
            self._failure(result, "unreachable")

    def v2_runner_item_on_ok(self, result):
        self._on_result(result, "changed" if _part(result, "result").get("changed") else "ok")

    def v2_runner_item_on_failed(self, result):
        self._on_result(result, "failed")

    def v2_runner_item_on_skipped(self, result):
        self._on_result(result, "skipped")

    def v2_runner_retry(self, result):
        data = _part(result, "result")
        self._append("  retrying (%s of %s)\n" % (data.get("attempts"), data.get("retries")))

    def v2_playbook_on_no_hosts_matched(self):
        self._append("no hosts matched\n")

    def v2_playbook_on_stats(self, stats):
        if self.run is None or self._done:
            return
        self._done = True
        said = self.run.end([(host, stats.summarize(host)) for host in sorted(stats.processed)])
        if said is not None:
            ok, message = said
            if ok:
                self._display.display(message)
            else:
                self._warn(message)
