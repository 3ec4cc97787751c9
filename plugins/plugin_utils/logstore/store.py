# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The log store: one folder per job, in S3 (any S3-compatible server) or a local directory.

A job's folder ``<job-id>/`` holds:

``log``          plain text, growing while the job runs
``log.html``     a static viewer (:data:`VIEWER_HTML`) that follows ``log`` live and shows the
                 outcome from ``result.json`` when the job is done
``result.json``  the machine-readable outcome (:data:`OUTCOMES`): job, host, start, end,
                 duration, outcome, reason
``attachments/`` what the job left in its attachments directory

Who writes it: the callback plugin ``testfleet.infra.job_log`` keeps a local copy of the folder
(the *spool*, :class:`JobSpool`) and a background :class:`Shipper` copies it to the store every
few seconds or every few KB. The worker finishes the folder after the playbook ended (or was
killed) from the same spool, so what reaches the store is the same whether the job ran under a
worker or by hand.

A broken store never fails a job: every upload is retried with exponential backoff, a circuit
breaker stops hammering a store that keeps failing, and what could not be sent stays in the
spool. Secrets are removed before anything is written to the spool (:class:`Redactor`).

Backends, chosen by :func:`open_store` from the ``log_store`` config section:

``file:///var/lib/testfleet/logs`` (or a plain path): a local directory, the embedded default.
The growing log is appended in place; other files are replaced atomically.

``s3://bucket/prefix`` with an optional ``endpoint_url``: boto3 with short timeouts and no
retries of its own (the shipper retries). S3 has no append: each flush uploads the whole log so
far, and the flush interval grows with the log's size (at most about one MiB/s is re-sent), so
the cost stays bounded; :data:`MAX_LOG_BYTES` caps a log.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import random
import re
import tempfile
import threading
import time
from urllib.parse import quote, unquote, urlsplit

_BOTO = {}


def _boto():
    """boto3 and botocore, imported on first use: the import costs about 0.2 s, which every
    playbook run would pay for the callback even with a local store."""
    if not _BOTO:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise LogStoreError("the S3 log store needs the Python library boto3 (pip install boto3): %s" % exc)
        _BOTO.update(boto3=boto3, config=botocore.config, exceptions=botocore.exceptions)
    return _BOTO


LOG = "log"
RESULT = "result.json"
VIEWER = "log.html"
ATTACHMENTS = "attachments"
DEFAULT_URL = "file:///var/lib/testfleet/logs"

# outcome -> meaning; "running" is the only non-terminal one. An "error" with "retry": true
# was requeued and will run again.
OUTCOMES = {
    "running": "the job is running",
    "success": "the job's playbook succeeded",
    "failure": "the job ran and failed (a failing test is a result)",
    "error": "an infrastructure error or a timeout",
}

MAX_LOG_BYTES = 64 * 1024 * 1024
MAX_ATTACHMENT_FILES = 1000
MAX_ATTACHMENT_BYTES = 512 * 1024 * 1024
S3_RESEND_BYTES_PER_S = 1024 * 1024
REDACTED = "********"

CONTENT_TYPES = {
    LOG: "text/plain; charset=utf-8",
    RESULT: "application/json",
    VIEWER: "text/html; charset=utf-8",
}
NO_STORE = (LOG, RESULT)

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class LogStoreError(Exception):
    """The store refused or failed an operation (retryable unless said otherwise)."""


class ShortFile(LogStoreError):
    """An append found the stored file shorter than expected: upload it whole instead."""


def utc_now_iso(ts=None):
    """``2026-01-02T03:04:05.678901Z`` for ``ts`` (seconds since the epoch, default now)."""
    moment = datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text):
    """Seconds since the epoch of a timestamp written by :func:`utc_now_iso`."""
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def check_job_id(job_id):
    """Return ``job_id`` if it can name a folder (the job schema's id rule), else raise."""
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id) or job_id in (".", ".."):
        raise LogStoreError("a job id must be 1-128 letters, digits, '.', '_' or '-', got %r" % (job_id,))
    return job_id


def _check_name(name):
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise LogStoreError("invalid file name in a job folder: %r" % (name,))
    return name


class LocalStore:
    """A local directory: ``<root>/<job-id>/<name>``."""

    supports_append = True

    def __init__(self, root, public_url=None):
        self.root = os.path.abspath(root)
        self.public_url = public_url.rstrip("/") if public_url else None

    def __repr__(self):
        return "LocalStore(%r)" % self.root

    def _path(self, job_id, name):
        return os.path.join(self.root, check_job_id(job_id), _check_name(name))

    def put(self, job_id, name, data):
        """Replace ``name`` of the job's folder with ``data`` (bytes), atomically."""
        path = self._path(job_id, name)
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                _remove(tmp)
                raise
        except OSError as exc:
            raise LogStoreError("cannot write %s: %s" % (path, exc.strerror or exc))

    def write_at(self, job_id, name, offset, data):
        """Write ``data`` at byte ``offset`` of ``name`` and cut what follows (a growing log)."""
        path = self._path(job_id, name)
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            with os.fdopen(fd, "wb") as handle:
                if offset > os.fstat(handle.fileno()).st_size:
                    raise ShortFile("%s is shorter than %d bytes: upload it whole" % (path, offset))
                handle.seek(offset)
                handle.write(data)
                handle.truncate()
        except OSError as exc:
            raise LogStoreError("cannot write %s: %s" % (path, exc.strerror or exc))

    def get(self, job_id, name):
        """The content of ``name`` (bytes), or None when it does not exist."""
        try:
            with open(self._path(job_id, name), "rb") as handle:
                return handle.read()
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise LogStoreError("cannot read %s: %s" % (self._path(job_id, name), exc.strerror or exc))

    def list(self, job_id):
        """Names of the files in the job's folder (``attachments/...`` included), sorted."""
        top = os.path.join(self.root, check_job_id(job_id))
        names = []
        for folder, dummy, files in os.walk(top):
            for filename in files:
                if not filename.startswith(".tmp-"):
                    names.append(os.path.relpath(os.path.join(folder, filename), top).replace(os.sep, "/"))
        return sorted(names)

    def location(self, job_id, name=""):
        """Where a person finds ``name`` (the folder by default): public URL or local path."""
        if self.public_url:
            return "%s/%s/%s" % (self.public_url, quote(check_job_id(job_id)), quote(name))
        return os.path.join(self.root, check_job_id(job_id), name)


class S3Store:
    """An S3 bucket (any S3-compatible server): ``s3://<bucket>/<prefix>/<job-id>/<name>``."""

    supports_append = False

    def __init__(self, bucket, prefix="", endpoint_url=None, public_url=None, region=None,
                 connect_timeout=5.0, read_timeout=15.0, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.public_url = public_url.rstrip("/") if public_url else None
        if client is None:
            boto = _boto()
            config = boto["config"].Config(
                connect_timeout=connect_timeout, read_timeout=read_timeout,
                retries={"total_max_attempts": 1}, signature_version="s3v4")
            client = boto["boto3"].session.Session().client(
                "s3", endpoint_url=endpoint_url, config=config,
                region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        self.client = client

    def __repr__(self):
        return "S3Store(s3://%s/%s, endpoint_url=%r)" % (self.bucket, self.prefix, self.endpoint_url)

    def _key(self, job_id, name):
        key = "%s/%s" % (check_job_id(job_id), _check_name(name))
        return "%s/%s" % (self.prefix, key) if self.prefix else key

    @staticmethod
    def _client_error(exc):
        """The error code of a botocore ClientError, else None."""
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return response["Error"]
        return None

    def _fail(self, what, key, exc):
        error = self._client_error(exc)
        if error is not None:
            detail = "%s %s" % (error.get("Code", "?"), error.get("Message", ""))
        else:
            detail = "%s: %s" % (type(exc).__name__, exc)
        return LogStoreError("S3 %s of s3://%s/%s failed: %s" % (what, self.bucket, key, detail.strip()))

    def put(self, job_id, name, data):
        key = self._key(job_id, name)
        extra = {"ContentType": CONTENT_TYPES.get(name, "application/octet-stream")}
        if name in NO_STORE:
            extra["CacheControl"] = "no-store"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except Exception as exc:  # botocore raises many unrelated classes; all are retryable here
            raise self._fail("upload", key, exc)

    def get(self, job_id, name):
        key = self._key(job_id, name)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if (self._client_error(exc) or {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail("download", key, exc)

    def list(self, job_id):
        top = self._key(job_id, "x")[:-1]
        names = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=top):
                names.extend(item["Key"][len(top):] for item in page.get("Contents", ()))
        except Exception as exc:
            raise self._fail("listing", top, exc)
        return sorted(names)

    def location(self, job_id, name=""):
        if self.public_url:
            return "%s/%s/%s" % (self.public_url, quote(check_job_id(job_id)), quote(name))
        return "s3://%s/%s" % (self.bucket, self._key(job_id, name or "x")[:-1] + name)


def open_store(url=None, endpoint_url=None, public_url=None, region=None, **kwargs):
    """The store a ``log_store`` config section describes (``url`` default :data:`DEFAULT_URL`).

    ``url``: ``file:///dir``, a plain directory path, or ``s3://bucket[/prefix]``.
    """
    url = url or DEFAULT_URL
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LogStoreError("log store %s: a file:// URL names a local directory (file:///dir)" % url)
        return LocalStore(unquote(parts.path), public_url=public_url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise LogStoreError("log store %s names no bucket (s3://bucket/prefix)" % url)
        return S3Store(parts.netloc, unquote(parts.path), endpoint_url=endpoint_url,
                       public_url=public_url, region=region, **kwargs)
    if parts.scheme == "" and url:
        return LocalStore(os.path.expanduser(url), public_url=public_url)
    raise LogStoreError("log store %s: the URL must start with file:// or s3://" % url)


class Redactor:
    """Replaces secret values by ``********`` in text and in (nested) data.

    Longer secrets are replaced first, so one secret inside another leaves no part behind. The
    JSON-escaped form of each secret is removed too (it is what a dumped result shows).
    """

    def __init__(self, secrets=()):
        values = set()
        for secret in secrets:
            if secret is None:
                continue
            secret = str(secret)
            if secret.strip():
                values.add(secret)
                escaped = json.dumps(secret)[1:-1]
                if escaped != secret:
                    values.add(escaped)
        self.secrets = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in self.secrets)) if self.secrets else None

    def __bool__(self):
        return bool(self.secrets)

    def text(self, value):
        if self._pattern is None or not value:
            return value
        return self._pattern.sub(REDACTED, value)

    def binary(self, data):
        """``data`` (bytes, e.g. an attachment) with each secret overwritten by as many ``*``.

        The length stays the same, so offsets in binary files stay valid. A secret inside
        compressed or encoded content cannot be found.
        """
        for secret in self.secrets:
            raw = secret.encode("utf-8")
            if raw in data:
                data = data.replace(raw, b"*" * len(raw))
        return data

    def data(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return dict((self.text(k) if isinstance(k, str) else k, self.data(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


def job_secrets(job):
    """The secret values of a job: the values of ``args.secrets`` (a mapping name -> value)."""
    args = job.get("args") if isinstance(job, dict) else None
    secrets = args.get("secrets") if isinstance(args, dict) else None
    if isinstance(secrets, dict):
        return [str(v) for v in secrets.values() if v is not None]
    return []


def public_job(job):
    """The job as shown in ``result.json``: the values of ``args.secrets`` replaced."""
    if not isinstance(job, dict):
        return job
    shown = dict(job)
    args = shown.get("args")
    if isinstance(args, dict) and isinstance(args.get("secrets"), dict):
        shown["args"] = dict(args, secrets=dict((k, REDACTED) for k in args["secrets"]))
    return shown


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


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
        path = os.path.join(self.path, _check_name(name))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def read(self, name):
        try:
            with open(os.path.join(self.path, _check_name(name)), "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def read_result(self):
        data = self.read(RESULT)
        try:
            return json.loads(data.decode("utf-8")) if data else None
        except ValueError:
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
            self.pending[_check_name(name)] = data
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
    shipper.pending[VIEWER] = VIEWER_HTML.encode("utf-8")
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


def result_bytes(result):
    return (json.dumps(result, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


# The viewer: one static page for every job, next to its log. No external resources. It polls
# "log" (a Range request from the last offset; a server that ignores Range answers 200 with the
# whole file) and "result.json" until the outcome is final.
VIEWER_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>testfleet job log</title>
<style>
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; background: #fafafa; color: #222; }
header { position: sticky; top: 0; padding: 8px 12px; background: #fff; border-bottom: 1px solid #ddd; }
h1 { font-size: 16px; margin: 0 0 4px 0; }
#outcome { display: inline-block; padding: 1px 8px; border-radius: 4px; font-weight: bold; background: #ddd; }
#outcome.success { background: #2da44e; color: #fff; }
#outcome.failure { background: #cf222e; color: #fff; }
#outcome.error { background: #bf8700; color: #fff; }
#meta, #reason, #status { color: #555; font-size: 13px; }
pre#log { margin: 0; padding: 12px; font: 12px/1.35 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; }
</style>
</head>
<body>
<header>
<h1>Job <span id="job">?</span> <span id="outcome" class="running">loading</span></h1>
<div id="meta"></div>
<div id="reason"></div>
<div id="status"></div>
</header>
<pre id="log"></pre>
<script>
"use strict";
(function () {
  var POLL_MS = 2000;
  var offset = 0, decoder = new TextDecoder("utf-8"), final = false, timer = null;
  var logEl = document.getElementById("log");
  function text(id, value) { document.getElementById(id).textContent = value; }
  function atBottom() { return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40; }
  function reset() { offset = 0; decoder = new TextDecoder("utf-8"); logEl.textContent = ""; }
  function appendBytes(bytes) {
    if (!bytes.length) { return; }
    var follow = atBottom();
    offset += bytes.length;
    logEl.appendChild(document.createTextNode(decoder.decode(bytes, {stream: true})));
    if (follow) { window.scrollTo(0, document.body.scrollHeight); }
  }
  function total(response) {
    var range = response.headers.get("Content-Range") || "";
    var match = /\\/(\\d+)$/.exec(range);
    return match ? parseInt(match[1], 10) : null;
  }
  function fetchLog() {
    var headers = offset > 0 ? {"Range": "bytes=" + offset + "-"} : {};
    return fetch("log", {cache: "no-store", headers: headers}).then(function (response) {
      if (response.status === 416) {
        var size = total(response);
        if (size !== null && size < offset) { reset(); }
        return;
      }
      if (response.status === 404) { return; }
      if (!response.ok) { throw new Error("log: HTTP " + response.status); }
      return response.arrayBuffer().then(function (buffer) {
        var bytes = new Uint8Array(buffer);
        if (response.status === 206) {
          var size = total(response);
          if (size !== null && size < offset) { reset(); return; }
          appendBytes(bytes);
        } else {
          if (bytes.length < offset) { reset(); }
          appendBytes(bytes.subarray(offset));
        }
      });
    });
  }
  function showResult(result) {
    var job = result.job || {};
    text("job", job.id || "?");
    var outcome = result.outcome || "running";
    var el = document.getElementById("outcome");
    el.textContent = outcome + (outcome === "error" && result.retry ? " (will be retried)" : "");
    el.className = outcome;
    var parts = [];
    if (job.kind) { parts.push(job.kind); }
    if (job.repo) { parts.push(job.repo + (job.sha ? "@" + job.sha.substring(0, 12) : "")); }
    if (job.context) { parts.push(job.context); }
    if (result.host) { parts.push("on " + result.host); }
    if (result.start) { parts.push("started " + result.start); }
    if (typeof result.duration === "number") { parts.push(result.duration.toFixed(1) + " s"); }
    text("meta", parts.join(" \\u00b7 "));
    text("reason", result.reason || "");
    document.body.setAttribute("data-outcome", outcome);
    return outcome !== "running" && !(outcome === "error" && result.retry);
  }
  function fetchResult() {
    return fetch("result.json", {cache: "no-store"}).then(function (response) {
      if (!response.ok) { return false; }
      return response.json().then(showResult);
    });
  }
  function poll() {
    timer = null;
    fetchResult().catch(function () { return false; }).then(function (done) {
      final = done;
      return fetchLog();
    }).then(function () {
      text("status", final ? "" : "following the log\\u2026");
    }, function (err) {
      text("status", "cannot load the log (" + err.message + "), retrying");
    }).then(function () {
      if (final) { document.body.setAttribute("data-done", "true"); } else { timer = setTimeout(poll, POLL_MS); }
    });
  }
  poll();
})();
</script>
</body>
</html>
"""
