# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The job message, version 1: its schema, validation and wire encoding.

One job is one JSON object in one AMQP message. Everything that produces a job (the scanner,
``amqp_publish``, the operator CLI) and everything that consumes one (the worker) validates it
here, so a bad job is refused with the same message everywhere: the name of the bad field and
what it must be. Jobs are made with :func:`make_job` and named by the one rule of
:func:`job_id`, whoever makes them.

A message body becomes a job here only: :func:`decode_message` parses it (the worker's queues
also carry webhook deliveries, which ``plugin_utils/events.py`` maps to scan jobs) and
:func:`decode_job`, the inverse of :func:`encode_job`, parses and validates it.
"""

from __future__ import annotations

import hashlib
import json
import re

VERSION = 1

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KIND_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
REPO_RE = re.compile(r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$")
SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
CONTEXT_RE = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
MAX_TIMEOUT = 7 * 24 * 3600

# field -> what a valid value is (quoted in error messages)
FIELDS = {
    "version": "the integer 1",
    "id": "1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
    "kind": "a job kind naming playbooks/jobs/<kind>.yml: lower-case letters, digits and '-'",
    "repo": "a GitHub repository as 'owner/name'",
    "sha": "a full commit hash (40 or 64 lower-case hexadecimal characters)",
    "ref": "a non-empty git ref such as 'refs/heads/main'",
    "pull": "a pull request number (a positive integer)",
    "context": "a test context such as 'debian-12/default'",
    "timeout": "a whole number of seconds from 1 to %d" % MAX_TIMEOUT,
    "report": "an object (where and how to report the result)",
    "args": "an object (arguments for the job's playbook)",
}
REQUIRED = ("version", "id", "kind")
# Kinds whose playbooks cannot run without these fields.
REQUIRED_BY_KIND = {
    "test": ("repo", "sha", "context"),
    "scan": ("repo",),
    "release": ("repo", "ref"),
}


class JobError(ValueError):
    """An invalid job. ``field`` names the offending field (or '(message)' for the whole)."""

    def __init__(self, field, problem):
        self.field = field
        self.problem = problem
        super().__init__("invalid job: field %r %s" % (field, problem))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field(name, value):
    """Return True when ``value`` is a valid ``name`` field."""
    if name == "version":
        return _is_int(value) and value == VERSION
    if name in ("id", "kind", "repo", "sha", "context", "ref"):
        if not isinstance(value, str):
            return False
        pattern = {"id": ID_RE, "kind": KIND_RE, "repo": REPO_RE, "sha": SHA_RE,
                   "context": CONTEXT_RE}.get(name)
        return bool(value.strip()) if pattern is None else bool(pattern.match(value))
    if name == "pull":
        return _is_int(value) and value > 0
    if name == "timeout":
        return _is_int(value) and 1 <= value <= MAX_TIMEOUT
    if name in ("report", "args"):
        return isinstance(value, dict)
    raise AssertionError(name)  # pragma: no cover - FIELDS and this function list the same names


def validate_job(job):
    """Return ``job`` when it is a valid version-1 job, else raise JobError naming the field."""
    if not isinstance(job, dict):
        raise JobError("(message)", "must be a JSON object, got %s" % type(job).__name__)
    unknown = sorted(set(job) - set(FIELDS))
    if unknown:
        raise JobError(unknown[0], "is not a job field (known fields: %s)" % ", ".join(FIELDS))
    if "version" in job and not _check_field("version", job["version"]):
        raise JobError("version", "must be %s (this worker understands version %d only), got %r"
                       % (FIELDS["version"], VERSION, job["version"]))
    required = REQUIRED + REQUIRED_BY_KIND.get(job.get("kind"), ())
    for name in required:
        if name not in job or job[name] is None:
            raise JobError(name, "is required%s" % (
                "" if name in REQUIRED else " for %s jobs" % job["kind"]))
    for name, value in job.items():
        if value is None and name not in REQUIRED:
            continue
        if not _check_field(name, value):
            shown = value if not isinstance(value, str) or len(value) <= 80 else value[:77] + "..."
            raise JobError(name, "must be %s, got %r" % (FIELDS[name], shown))
    return job


def make_job(kind, ident, **fields):
    """A valid job of ``kind`` named ``ident`` with ``fields`` (those that are None are left out).

    Raise JobError naming the field when the job would be invalid.
    """
    job = {"version": VERSION, "id": ident, "kind": kind}
    job.update((name, value) for name, value in fields.items() if value is not None)
    return validate_job(job)


def digest(*parts):
    """12 hexadecimal characters of the SHA-256 of ``parts`` (strings) joined by newlines."""
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]


def job_id(prefix, name, tail=""):
    """The one rule for job ids: ``<prefix>-<name><tail>``, always valid for :data:`ID_RE`.

    Runs of characters other than letters, digits, ``.``, ``_`` and ``-`` in ``prefix`` and
    ``name`` become ``_``; the readable part is cut (and stripped of trailing ``.``, ``_``, ``-``)
    so that ``tail`` fits in 128 characters. What makes an id unique goes in ``tail`` (a
    :func:`digest` of what identifies the job, an attempt number, a random part), which must
    itself be made of those characters.
    """
    if len(tail) > 64 or not re.match(r"^[A-Za-z0-9._-]*$", tail):
        raise ValueError("a job id tail is at most 64 letters, digits, '.', '_' or '-', not %r" % (tail,))
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "%s-%s" % (prefix, name)).lstrip("._-")
    ident = readable[:128 - len(tail)].rstrip("._-") + tail
    if not ID_RE.match(ident):  # pragma: no cover - the construction above guarantees it
        raise ValueError("cannot make a job id of %r" % ident)
    return ident


def encode_job(job):
    """Validate ``job`` and return its wire form: compact JSON, keys sorted, UTF-8."""
    validate_job(job)
    return json.dumps(job, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_message(body):
    """The JSON value of a message body (bytes or str); raise JobError (field ``(message)``)
    when it is not UTF-8 or not JSON. Not validated: a work queue also carries deliveries."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JobError("(message)", "is not UTF-8: %s" % exc)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise JobError("(message)", "is not valid JSON: %s" % exc)


def decode_job(body):
    """Parse and validate a job message body (bytes or str); raise JobError when invalid."""
    return validate_job(decode_message(body))
