# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The status vocabulary testfleet writes on GitHub commits, and reading it back.

GitHub keeps a commit status as (state, context, description, target_url). testfleet's
description is a short text a person reads and the scanner parses back (``docs/statuses.md``)::

    <kind>[ on <host>][ · attempt <n>][ · deadline <YYYY-MM-DDTHH:MMZ>][ · <reason>]

    queued · attempt 1 · deadline 2024-05-02T10:32Z
    running on worker-1/0 · attempt 2 · deadline 2024-05-01T12:32Z
    success on worker-1/0 · attempt 1
    failure on worker-1/0 · attempt 1 · 3 tests failed
    error · attempt 2 · deadline passed (running until 2024-05-01T12:32Z)
    superseded · attempt 1 · the pull request moved on
    approval · a maintainer's /approve comment starts the tests

========== ============ =================================================================
kind       GitHub state meaning
========== ============ =================================================================
queued     pending      a test job is in a queue; ``deadline``: by when a worker must start it
running    pending      a worker (``host``) runs it; ``target_url`` is the live log;
                        ``deadline``: by when it must be done
success    success      the tests passed
failure    failure      the tests failed (``reason``)
error      error        the infrastructure failed (``reason``); the next scan re-queues it
superseded error        the pull request moved on (new head, closed): the run was stopped
approval   pending      an author not on the allow-list: waits for a maintainer's /approve
========== ============ =================================================================

Every description is at most 140 characters (GitHub's limit): only the reason is shortened
(ending in ``…``), so the kind, host, attempt and deadline always survive. The deadline is an
absolute UTC time rounded up to the minute. A host is shortened only when it alone would not
fit (it is never longer than 60 characters).
"""

from __future__ import annotations

import collections
import datetime
import re

MAX_LENGTH = 140
MAX_HOST = 60
SEPARATOR = " \u00b7 "   # " · "
ELLIPSIS = "\u2026"      # "…"

# The outcome words of a job (``outcome`` in its ``result.json``) are status kinds too. They are
# defined here, once: modules (github_status) know them, and modules import only module_utils.
# plugin_utils/job_run.py (the job-run contract) takes them from here.
RUNNING = "running"         # the only outcome that is not final
SUCCESS = "success"
FAILURE = "failure"
ERROR = "error"             # infrastructure (retried when the result says "retry": true) or a timeout
SUPERSEDED = "superseded"
OUTCOMES = (RUNNING, SUCCESS, FAILURE, ERROR, SUPERSEDED)

KINDS = ("queued", RUNNING, SUCCESS, FAILURE, ERROR, SUPERSEDED, "approval")
GITHUB_STATES = {
    "queued": "pending",
    RUNNING: "pending",
    SUCCESS: "success",
    FAILURE: "failure",
    ERROR: "error",
    SUPERSEDED: "error",
    "approval": "pending",
}
PENDING = ("queued", RUNNING)       # carry a deadline
FINISHED = (SUCCESS, FAILURE, SUPERSEDED)   # final whatever the result's "retry" says
APPROVAL_TEXT = "a maintainer's /approve comment starts the tests"
# The reason the scanner writes when it stops re-queuing a context that keeps erroring.
GAVE_UP = "gave up after %d attempts"

_DEADLINE_FORMAT = "%Y-%m-%dT%H:%MZ"
_PARSE_RE = re.compile(
    r"^(?P<kind>%s)"
    r"(?: on (?P<host>[^\s\u00b7]+))?"
    r"(?: \u00b7 attempt (?P<attempt>[1-9][0-9]{0,5}))?"
    r"(?: \u00b7 deadline (?P<deadline>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}Z))?"
    r"(?: \u00b7 (?P<reason>.+))?$" % "|".join(KINDS), re.S)


class Parsed(collections.namedtuple("Parsed", "kind attempt host reason deadline")):
    """A testfleet status read back: ``attempt`` is 0 for ``approval``; ``deadline`` an aware
    UTC datetime or None; ``host``/``reason`` None when not written."""

    __slots__ = ()

    @property
    def gave_up(self):
        """Whether this is an error the scanner has stopped re-queuing."""
        return self.kind == ERROR and (self.reason or "").startswith("gave up after ")


def github_state(kind):
    """The GitHub state (pending, success, failure, error) of a testfleet status kind."""
    try:
        return GITHUB_STATES[kind]
    except KeyError:
        raise ValueError("unknown status kind %r (known: %s)" % (kind, ", ".join(KINDS)))


def utc(value):
    """``value`` (an aware or naive-UTC datetime, an epoch number, or ISO 8601 text) as an
    aware UTC datetime; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        return value.astimezone(datetime.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        return utc(datetime.datetime.fromisoformat(text))
    raise TypeError("not a time: %r" % (value,))


def format_deadline(deadline):
    """``deadline`` rounded up to the minute, as ``YYYY-MM-DDTHH:MMZ``."""
    moment = utc(deadline)
    if moment.second or moment.microsecond:
        moment = moment.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    return moment.strftime(_DEADLINE_FORMAT)


def _one_line(text):
    return " ".join(str(text).split())


def _clean_host(host):
    host = "-".join(str(host).replace("\u00b7", "-").split())
    return host if len(host) <= MAX_HOST else host[:MAX_HOST - 1] + ELLIPSIS


def describe(kind, attempt=1, host=None, reason=None, deadline=None):
    """The description of a status (at most 140 characters); see the module docstring.

    ``deadline`` (a datetime, epoch seconds or ISO text) is written for queued and running
    only, where it is required. ``approval`` carries no attempt; its reason defaults to
    :data:`APPROVAL_TEXT`.
    """
    github_state(kind)
    if kind in PENDING and deadline is None:
        raise ValueError("a %s status needs a deadline" % kind)
    head = kind
    if host:
        head += " on " + _clean_host(host)
    parts = [head]
    if kind == "approval":
        reason = reason or APPROVAL_TEXT
    else:
        if not isinstance(attempt, int) or isinstance(attempt, bool) or not 1 <= attempt <= 999999:
            raise ValueError("attempt must be a whole number from 1, not %r" % (attempt,))
        parts.append("attempt %d" % attempt)
    if kind in PENDING:
        parts.append("deadline " + format_deadline(deadline))
    text = SEPARATOR.join(parts)
    if reason is not None and _one_line(reason):
        reason = _one_line(reason)
        room = MAX_LENGTH - len(text) - len(SEPARATOR)
        if len(reason) > room:
            reason = reason[:max(room - 1, 0)].rstrip() + ELLIPSIS
        text += SEPARATOR + reason
    return text


def parse(status):
    """Read a status dict ({state, description, ...}) back: :class:`Parsed`, or None when it
    was not written by testfleet (or its GitHub state does not match its kind)."""
    if not isinstance(status, dict):
        return None
    match = _PARSE_RE.match(status.get("description") or "")
    if match is None or GITHUB_STATES[match.group("kind")] != status.get("state"):
        return None
    kind = match.group("kind")
    attempt = int(match.group("attempt")) if match.group("attempt") else 0
    if (kind == "approval") != (attempt == 0):
        return None
    if (kind in PENDING) != bool(match.group("deadline")):
        return None
    deadline = None
    if match.group("deadline"):
        try:
            deadline = datetime.datetime.strptime(match.group("deadline"), _DEADLINE_FORMAT).replace(
                tzinfo=datetime.timezone.utc)
        except ValueError:
            return None
    return Parsed(kind, attempt, match.group("host"), match.group("reason"), deadline)


def status_for(kind, attempt=1, host=None, reason=None, deadline=None, target_url=None):
    """The GitHub status to post: {state, description, target_url}."""
    return {"state": github_state(kind),
            "description": describe(kind, attempt=attempt, host=host, reason=reason, deadline=deadline),
            "target_url": target_url}
