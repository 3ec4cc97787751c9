# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the forge client reads and keeps of GitHub's answers, apart from how it asks.

:class:`ForgeError`; the headers it reads (rate limit, ``Retry-After``, ``Link`` pagination);
the plain dicts it answers (pulls, statuses, comments, hooks); the :class:`EtagCache` (below; the
docstring of ``forge/client.py`` says how it is used); and the filter that keeps secrets out of PyGithub's log.

The ETag cache
    Always in memory; with ``etag_cache_dir`` also on disk, one JSON file per URL (and
    credential identity: answers depend on what the credential may see), written atomically
    (a temporary file renamed over the old one) so that several processes (each scan job is
    one) share it safely. Files are private (mode 0600, directory 0700) since bodies may hold
    private repository data; an unreadable or corrupt file is a cache miss. The directory can
    be emptied at any time.
"""

from __future__ import annotations

import calendar
import datetime
import hashlib
import json
import logging
import os
import re
import threading
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.redact import MASK

MEMORY_CACHE_ENTRIES = 20000

LOG = logging.getLogger("testfleet.forge")
_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel="([^"]*)"')
_SECRET_FIELD_RE = re.compile(r'("(?:token|secret)"\s*:\s*")((?:[^"\\]|\\.)*)(")')


class ForgeError(Exception):
    """A GitHub problem, worded for the person who has to fix it; never carries a secret.

    ``status``: the HTTP status GitHub answered, or None (unreachable, rate limit reserve,
    bad configuration); ``retry_at``: epoch seconds after which retrying makes sense, or None.
    """

    def __init__(self, message, status=None, retry_at=None):
        super().__init__(message)
        self.status = status
        self.retry_at = retry_at


class SecretFieldFilter(logging.Filter):
    """Masks ``"token": "..."`` and ``"secret": "..."`` in PyGithub's debug log, which shows
    request and response bodies (a hook's secret, an installation token)."""

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception:  # pylint: disable=broad-except
            return True  # a broken record is not ours to fix
        masked = _SECRET_FIELD_RE.sub(lambda m: m.group(1) + MASK + m.group(3), message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


PYGITHUB_LOG_FILTER = SecretFieldFilter()


def guard_pygithub_log():
    """PyGithub logs whole exchanges at DEBUG: keep that logger at INFO unless someone chose a
    level for it, and mask secret fields whatever its level."""
    logger = logging.getLogger("github.Requester")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if PYGITHUB_LOG_FILTER not in logger.filters:
        logger.addFilter(PYGITHUB_LOG_FILTER)


def iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def epoch(text):
    """Epoch seconds of GitHub's ``YYYY-MM-DDTHH:MM:SSZ`` (or with an offset)."""
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return calendar.timegm(value.utctimetuple())


def int_header(headers, name):
    try:
        return int(float(headers[name]))
    except (KeyError, TypeError, ValueError):
        return None


def retry_after(headers):
    """Seconds of a ``Retry-After`` header (a number or an HTTP date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        import email.utils
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def next_link(header):
    for url, rel in _LINK_RE.findall(header or ""):
        if rel == "next":
            return url
    return None


def page_after(url):
    """``url`` asking for the page after the one it asks for."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    page = 1
    for name, value in query:
        if name == "page" and value.isdigit():
            page = int(value)
    query = [(n, v) for n, v in query if n != "page"] + [("page", str(page + 1))]
    return urlunsplit(parts._replace(query=urlencode(query)))


def login(user):
    return (user or {}).get("login") if isinstance(user, dict) else None


def pull_dict(data):
    head, base = data.get("head") or {}, data.get("base") or {}
    merged = data.get("merged")
    if merged is None:  # lists of pull requests carry merged_at only
        merged = data.get("merged_at") is not None
    return {"number": data.get("number"), "state": data.get("state"), "draft": bool(data.get("draft")),
            "merged": bool(merged), "head_sha": head.get("sha"), "head_ref": head.get("ref"),
            "head_repo": (head.get("repo") or {}).get("full_name"), "base_ref": base.get("ref"),
            "author": login(data.get("user")), "author_association": data.get("author_association"),
            "labels": [label.get("name") for label in data.get("labels") or () if isinstance(label, dict)],
            "updated_at": data.get("updated_at"), "title": data.get("title"), "body": data.get("body"),
            "html_url": data.get("html_url")}


def status_dict(data):
    return {"id": data.get("id"), "context": data.get("context"), "state": data.get("state"),
            "description": data.get("description"), "target_url": data.get("target_url"),
            "created_at": data.get("created_at"), "updated_at": data.get("updated_at"),
            "creator": login(data.get("creator"))}


def comment_dict(data):
    return {"id": data.get("id"), "user": login(data.get("user")), "body": data.get("body"),
            "created_at": data.get("created_at"), "updated_at": data.get("updated_at"),
            "author_association": data.get("author_association")}


def hook_dict(data):
    config = data.get("config") or {}
    return {"id": data.get("id"), "name": data.get("name"), "active": bool(data.get("active")),
            "events": list(data.get("events") or ()), "url": config.get("url"),
            "content_type": config.get("content_type"),
            "insecure_ssl": str(config.get("insecure_ssl", "0")).lower() in ("1", "true"),
            "has_secret": bool(config.get("secret")),
            "created_at": data.get("created_at"), "updated_at": data.get("updated_at")}


class EtagCache:
    """ETag, body and ``Link`` header of GET answers by key: in memory and, with ``directory``,
    on disk (shared by processes; see the module docstring)."""

    def __init__(self, directory=None):
        self.directory = directory
        self._memory = {}
        self._lock = threading.Lock()
        if directory:
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise ForgeError("cannot create etag_cache_dir %s: %s" % (directory, exc.strerror)) from None

    def _file(self, key):
        return os.path.join(self.directory, hashlib.sha256(key.encode("utf-8")).hexdigest() + ".json")

    def get(self, key):
        """``{"etag", "body", "link"}`` or None."""
        if self.directory:
            try:
                with open(self._file(key), encoding="utf-8") as handle:
                    entry = json.load(handle)
                if (isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("etag"), str)
                        and isinstance(entry.get("body"), str)):
                    return entry
            except (OSError, ValueError):
                pass
        with self._lock:
            return self._memory.get(key)

    def put(self, key, etag, body, link):
        entry = {"key": key, "etag": etag, "body": body, "link": link}
        with self._lock:
            self._memory.pop(key, None)
            self._memory[key] = entry
            while len(self._memory) > MEMORY_CACHE_ENTRIES:
                self._memory.pop(next(iter(self._memory)))
        if not self.directory:
            return
        try:
            files.write_atomic(self._file(key), json.dumps(entry), fsync=False)
        except OSError as exc:
            LOG.warning("cannot write the ETag cache in %s: %s", self.directory, exc.strerror)
