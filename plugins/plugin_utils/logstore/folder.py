# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A job's folder in the log store: its file names, limits and errors (see ``__init__``).

What ``result.json`` holds (its schema, the outcome words) is the job-run contract's, in
``plugin_utils/job_run.py``; this module only names the file and encodes it.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from ansible_collections.testfleet.infra.plugins.module_utils import jobs

LOG = "log"
RESULT = "result.json"
VIEWER = "log.html"
ATTACHMENTS = "attachments"
DEFAULT_URL = "file:///var/lib/testfleet/logs"

MAX_LOG_BYTES = 64 * 1024 * 1024
MAX_ATTACHMENT_FILES = 1000
MAX_ATTACHMENT_BYTES = 512 * 1024 * 1024

CONTENT_TYPES = {
    LOG: "text/plain; charset=utf-8",
    RESULT: "application/json",
    VIEWER: "text/html; charset=utf-8",
}
NO_STORE = (LOG, RESULT)


class LogStoreError(Exception):
    """The store refused or failed an operation (retryable unless said otherwise)."""


class ShortFile(LogStoreError):
    """An append found the stored file shorter than expected: upload it whole instead."""


def check_job_id(job_id):
    """Return ``job_id`` if it can name a folder (the job schema's id rule), else raise."""
    if not isinstance(job_id, str) or not jobs.ID_RE.match(job_id) or job_id in (".", ".."):
        raise LogStoreError("a job id must be 1-128 letters, digits, '.', '_' or '-', got %r" % (job_id,))
    return job_id


def check_name(name):
    """Return ``name`` if it names a file inside a job folder (no ``..``, not absolute), else raise."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise LogStoreError("invalid file name in a job folder: %r" % (name,))
    return name


def public_location(public_url, job_id, name=""):
    """The address of ``name`` of a job's folder (the folder itself by default) under the
    store's ``public_url`` (no trailing slash): what status links point at."""
    return "%s/%s/%s" % (public_url, quote(check_job_id(job_id)), quote(name))


def result_bytes(result):
    """``result.json``'s content for the result mapping ``result``."""
    return (json.dumps(result, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")
