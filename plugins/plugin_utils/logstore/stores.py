# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The log store's backends and :func:`open_store`, which picks one from a ``log_store`` section.

``file:///var/lib/testfleet/logs`` (or a plain path): :class:`LocalStore`, a local directory,
the embedded default. The growing log is appended in place; other files are replaced
atomically. ``s3://bucket/prefix``: :class:`~.s3.S3Store`.

Every store has ``put(job_id, name, data)``, ``get(job_id, name)`` (None when missing),
``list(job_id)``, ``location(job_id, name)`` and ``supports_append`` (then ``write_at`` too).
"""

from __future__ import annotations

import errno
import os
from urllib.parse import unquote, urlsplit

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils import s3
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.folder import (
    DEFAULT_URL, LogStoreError, ShortFile, check_job_id, check_name, public_location)
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.s3 import S3Store


class LocalStore:
    """A local directory: ``<root>/<job-id>/<name>``."""

    supports_append = True

    def __init__(self, root, public_url=None):
        self.root = os.path.abspath(root)
        self.public_url = public_url.rstrip("/") if public_url else None

    def __repr__(self):
        return "LocalStore(%r)" % self.root

    def _path(self, job_id, name):
        return os.path.join(self.root, check_job_id(job_id), check_name(name))

    def put(self, job_id, name, data):
        """Replace ``name`` of the job's folder with ``data`` (bytes), atomically."""
        path = self._path(job_id, name)
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            files.write_atomic(path, data, mode=0o644, fsync=False)
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
        for folder, dummy, file_names in os.walk(top):
            for filename in file_names:
                if not filename.startswith(".tmp-"):
                    names.append(os.path.relpath(os.path.join(folder, filename), top).replace(os.sep, "/"))
        return sorted(names)

    def location(self, job_id, name=""):
        """Where a person finds ``name`` (the folder by default): public URL or local path."""
        if self.public_url:
            return public_location(self.public_url, job_id, name)
        return os.path.join(self.root, check_job_id(job_id), name)


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
        located = s3.bucket_and_prefix(parts)
        if located is None:
            raise LogStoreError("log store %s names no bucket (s3://bucket/prefix)" % url)
        bucket, prefix = located
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, public_url=public_url, region=region, **kwargs)
    if parts.scheme == "" and url:
        return LocalStore(os.path.expanduser(url), public_url=public_url)
    raise LogStoreError("log store %s: the URL must start with file:// or s3://" % url)
