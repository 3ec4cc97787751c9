# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local copy of a job's folder (:class:`JobSpool`) and its way to the store (:class:`Shipper`,
:func:`upload_folder`).

A broken store never fails a job: every upload is retried with exponential backoff, a circuit
breaker stops hammering a store that keeps failing, and what could not be sent stays in the
spool. S3 has no append: each flush uploads the whole log so far, and the flush interval grows
with the log's size (at most about :data:`S3_RESEND_BYTES_PER_S` is re-sent), so the cost stays
bounded; :data:`~.folder.MAX_LOG_BYTES` caps a log.
"""

from __future__ import annotations

import os
import random
import threading
import time

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.folder import (
    ATTACHMENTS, LOG, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENT_FILES, MAX_LOG_BYTES, RESULT, VIEWER,
    LogStoreError, ShortFile, check_job_id, check_name, result_bytes)
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.viewer import viewer_bytes

S3_RESEND_BYTES_PER_S = 1024 * 1024


class JobSpool:
    """The local copy of a job's folder: ``<spool_dir>/<job-id>/`` (same names as the store).

    ``log`` is appended under a lock (the callback's thread tails the job's live output while
    the play reports task results); it stops growing at ``max_log_bytes`` with a note. Files
    whose names start with ``.`` are private (the live output file) and are never shipped.
    """

    OUTPUT = ".output"

    def __init__(self, spool_dir, job_id, max_log_bytes=MAX_LOG_BYTES):
        self.job_id = check_job_id(job_id)
        self.path = os.path.join(os.path.abspath(spool_dir), job_id)
        self.max_log_bytes = max_log_bytes
        self.lock = threading.Lock()
        os.makedirs(self.attachments_dir, mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        self._truncated = False

    @property
    def log_path(self):
        return os.path.join(self.path, LOG)

    @property
    def attachments_dir(self):
        return os.path.join(self.path, ATTACHMENTS)

    @property
    def output_path(self):
        return os.path.join(self.path, self.OUTPUT)

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def append(self, text):
        """Append ``text`` (already redacted) to the log; return the number of bytes written."""
        data = text.encode("utf-8", "replace")
        with self.lock:
            size = self.log_size()
            if self._truncated or size >= self.max_log_bytes:
                return 0
            if size + len(data) > self.max_log_bytes:
                data = data[:self.max_log_bytes - size] + (
                    "\n[testfleet: the log reached %d bytes; the rest is not kept]\n" % self.max_log_bytes).encode()
                self._truncated = True
            with open(self.log_path, "ab") as handle:
                handle.write(data)
            return len(data)

    def read_log(self, offset=0):
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read()
        except OSError:
            return b""

    def write(self, name, data):
        """Write a small file of the folder (``result.json``) atomically."""
        files.write_atomic(os.path.join(self.path, check_name(name)), data, mode=0o600, fsync=False)

    def read(self, name):
        try:
            with open(os.path.join(self.path, check_name(name)), "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def attachments(self, max_files=MAX_ATTACHMENT_FILES, max_bytes=MAX_ATTACHMENT_BYTES):
        """``(files, skipped)``: ``[(name, path)]`` under ``attachments/`` and a list of reasons.

        Symbolic links are not followed (a job cannot attach a file outside its folder).
        """
        files, skipped, total = [], [], 0
        for folder, dirs, names in os.walk(self.attachments_dir):
            dirs.sort()
            for filename in sorted(names):
                path = os.path.join(folder, filename)
                name = "%s/%s" % (ATTACHMENTS, os.path.relpath(path, self.attachments_dir).replace(os.sep, "/"))
                if os.path.islink(path) or not os.path.isfile(path):
                    skipped.append("%s: not a regular file" % name)
                    continue
                size = os.path.getsize(path)
                if len(files) >= max_files or total + size > max_bytes:
                    skipped.append("%s: over the attachment limits (%d files, %d bytes)" % (name, max_files, max_bytes))
                    continue
                total += size
                files.append((name, path))
        return files, skipped


class _FileRef:
    """A file to upload, read only when its turn comes (attachments can be large)."""

    __slots__ = ("path",)

    def __init__(self, path):
        self.path = path

    def read(self):
        """The content, or None when the file is gone (nothing to upload then)."""
        try:
            with open(self.path, "rb") as handle:
                return handle.read()
        except OSError:
            return None


class Shipper:
    """Copies a :class:`JobSpool` to a store from a background thread, never blocking the caller.

    ``poke(nbytes)`` after appending to the log: the log is shipped when ``flush_bytes`` are
    waiting or every ``interval`` seconds. ``put(name, data)`` queues a small file (the latest
    content of a name wins). ``tick`` (optional) is called by the thread before each flush; the
    callback uses it to tail the job's live output.

    Failures are retried with exponential backoff (``backoff`` doubling up to ``max_backoff``,
    with jitter); after ``breaker_after`` failures in a row the breaker opens and live flushes
    pause for ``breaker_cooldown`` seconds. ``close(deadline)`` makes the last flush and returns
    True when everything is stored. ``on_error(message)`` is told about each failure.
    """

    def __init__(self, store, spool, interval=2.0, flush_bytes=64 * 1024, backoff=0.5, max_backoff=30.0,
                 breaker_after=5, breaker_cooldown=30.0, on_error=None, tick=None, redactor=None):
        self.store = store
        self.redactor = redactor
        self.spool = spool
        self.interval = float(interval)
        self.flush_bytes = int(flush_bytes)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.breaker_after = breaker_after
        self.breaker_cooldown = float(breaker_cooldown)
        self.on_error = on_error
        self.tick = tick
        self.shipped = 0            # bytes of the log known to be in the store
        self.uploaded_size = None   # size of the whole-log upload last made (S3)
        self.last_upload = 0.0
        self.pending = {}           # name -> bytes waiting to be stored
        self.failures = 0           # failures in a row
        self.total_failures = 0
        self.last_error = None
        self.retry_at = 0.0
        self._waiting = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None

    # --- called by the producer -------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="testfleet-log-shipper", daemon=True)
        self._thread.start()
        return self

    def poke(self, nbytes=0):
        self._waiting += nbytes
        if self._waiting >= self.flush_bytes:
            self._wake.set()

    def put(self, name, data):
        with self._lock:
            self.pending[check_name(name)] = data
        self._wake.set()

    def put_attachments(self):
        """Queue every file of the spool's ``attachments/``; return the skipped ones' reasons."""
        files, skipped = self.spool.attachments()
        with self._lock:
            for name, path in files:
                self.pending[name] = _FileRef(path)
        self._wake.set()
        return skipped

    def close(self, deadline=15.0):
        """Stop the thread, then flush until everything is stored or ``deadline`` s passed."""
        end = time.monotonic() + deadline
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, end - time.monotonic()))
            if self._thread.is_alive():
                self._report("the log shipper did not stop within %.0f s (the store hangs)" % deadline)
                return False
        if self.tick is not None:
            self.tick()
        while True:
            if self.flush(force=True):
                return True
            wait = min(self._delay(), end - time.monotonic())
            if wait <= 0:
                return False
            time.sleep(wait)

    @property
    def done(self):
        return not self.pending and self.shipped == self.spool.log_size()

    # --- the thread ---------------------------------------------------------------------------
    def _run(self):
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self.tick is not None:
                    self.tick()
                self.flush()
            except Exception as exc:  # the thread must survive anything
                self._report("log shipper: %s: %s" % (type(exc).__name__, exc))

    def _delay(self):
        if self.failures >= self.breaker_after:
            return self.breaker_cooldown
        return min(self.max_backoff, self.backoff * (2 ** max(0, self.failures - 1))) * random.uniform(0.8, 1.2)

    def _report(self, message):
        self.last_error = message
        if self.on_error is not None:
            try:
                self.on_error(message)
            except Exception:
                pass

    def flush(self, force=False):
        """Ship what is waiting; return True when the store holds everything of the spool."""
        now = time.monotonic()
        if not force and now < self.retry_at:
            return False
        try:
            self._ship_log(force)
            while True:
                with self._lock:
                    if not self.pending:
                        break
                    name, data = next(iter(self.pending.items()))
                content = data.read() if isinstance(data, _FileRef) else data
                if content is not None and isinstance(data, _FileRef) and self.redactor:
                    content = self.redactor.binary(content)
                if content is not None:
                    self.store.put(self.spool.job_id, name, content)
                with self._lock:
                    if self.pending.get(name) is data:
                        del self.pending[name]
        except LogStoreError as exc:
            self.failures += 1
            self.total_failures += 1
            self.retry_at = time.monotonic() + self._delay()
            self._report(str(exc))
            return False
        self.failures = 0
        return self.done

    def _ship_log(self, force):
        size = self.spool.log_size()
        if size == self.shipped and self.uploaded_size in (None, size):
            return
        self._waiting = 0
        if self.store.supports_append:
            data = self.spool.read_log(self.shipped)
            try:
                self.store.write_at(self.spool.job_id, LOG, self.shipped, data)
            except ShortFile:
                data = self.spool.read_log(0)
                self.store.put(self.spool.job_id, LOG, data)
                self.shipped = 0
            self.shipped += len(data)
            return
        # S3: no append; re-send the whole log, less often as it grows.
        now = time.monotonic()
        if not force and now - self.last_upload < max(self.interval, float(size) / S3_RESEND_BYTES_PER_S):
            return
        data = self.spool.read_log(0)
        self.store.put(self.spool.job_id, LOG, data)
        self.last_upload = now
        self.shipped = self.uploaded_size = len(data)


def upload_folder(store, spool, result=None, attachments=True, deadline=60.0, backoff=0.5, on_error=None, redactor=None):
    """Store the whole spool (log, attachments, then ``result`` last) with retries.

    Used by the worker after a job ended (also when the playbook was killed and its callback
    could not ship). Attachments pass through ``redactor`` (a :class:`Redactor`). Returns
    ``(ok, error)``; never raises for store failures.
    """
    shipper = Shipper(store, spool, backoff=backoff, max_backoff=10.0, breaker_after=10 ** 6, on_error=on_error,
                      redactor=redactor)
    log = spool.read_log(0)
    shipper.shipped = shipper.uploaded_size = len(log)
    shipper.pending[LOG] = log
    shipper.pending[VIEWER] = viewer_bytes()
    if attachments:
        shipper.put_attachments()
    if result is not None:
        # dicts keep their order: result.json goes last, once the rest is stored
        shipper.pending[RESULT] = result_bytes(result)
    end = time.monotonic() + deadline
    while True:
        if shipper.flush(force=True):
            return True, None
        wait = min(shipper._delay(), end - time.monotonic())
        if wait <= 0:
            return False, shipper.last_error
        time.sleep(wait)
