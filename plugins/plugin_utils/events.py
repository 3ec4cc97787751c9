# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a message on the ``events`` queue asks for: a webhook delivery becomes a scan job.

The ``events`` queue holds two kinds of message:

* webhook deliveries, published by ``testfleet-webhook`` as they came from GitHub:
  ``{"delivery": id, "event": X-GitHub-Event, "received_at": ..., "payload": {...}}``;
* plain version-1 jobs (``jobs.py``), usually ``scan`` jobs from the operator CLI or its timer.

:func:`scan_job_for_delivery` maps a delivery to the scan job it calls for, or to nothing and
the reason (the worker acks such a delivery and logs the reason):

================================ =====================================================================
delivery                         scan job
================================ =====================================================================
``pull_request`` opened,         that pull request: ``repo``, ``pull``, ``sha`` (its head),
synchronize, reopened, closed,   ``args.trigger`` ``pull_request/<action>`` (a closed one too: the
ready_for_review, labeled        scan stops what still runs for it)
``push`` to a branch             ``repo``, ``ref`` (``refs/heads/<branch>``), ``sha`` (the new head),
                                 ``args.trigger`` ``push``; a deleted branch and tags: nothing
``issue_comment`` created on a   ``repo``, ``pull``, ``args.trigger`` ``issue_comment`` and
pull request, with commands      ``args.commands``: ``[{"command": "retest"|"approve", "contexts":
                                 [...], "user": login, "created_at": the comment's time}]``; the
                                 scan checks the user's permission, and uses ``created_at`` so a
                                 command delivered twice runs once. Comments on plain issues, and
                                 without a command: nothing
``status`` in state ``error``    ``repo``, ``sha``, ``args.trigger`` ``status/error``: a context broke
                                 (a worker's infrastructure error, a reaped deadline) and the scan
                                 re-queues it now; other states: nothing (``pending`` is the
                                 scanner's or a worker's own progress, success and failure are final)
``ping``, the rest               nothing
================================ =====================================================================

The events and actions scanned are defined once, in ``module_utils/webhook_events.py``: the
webhook's default event filter is made from the same list, so what it queues has a handler here.

Commands are lines of the comment (outside code fences) that are ``/retest`` followed by zero or
more contexts (none: every failed or errored context), or exactly ``/approve``.

The job id is derived from the delivery id only (``gh-<delivery>``), so a delivery that reaches
the queue twice (GitHub's redelivery, a webhook retry) makes the same job id.

:func:`job_for_message` decodes any message of a work queue: a job is validated as a job, a
delivery is mapped as above. Both raise :class:`~.jobs.JobError` or :class:`InvalidDelivery`
for messages to dead-letter.
"""

from __future__ import annotations

import hashlib
import re

from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils.webhook_events import (
    ISSUE_COMMENT_ACTIONS, PULL_REQUEST_ACTIONS)

DELIVERY_KEYS = ("delivery", "event", "payload")
JOB_ID_PREFIX = "gh"
SAFE_ID_RE = re.compile(r"^[A-Za-z0-9._-]+$")
ZERO_SHA_RE = re.compile(r"^0+$")
BRANCH_PREFIX = "refs/heads/"
FENCE_RE = re.compile(r"^(```|~~~)")
MAX_COMMANDS = 10
MAX_CONTEXTS = 50


class InvalidDelivery(ValueError):
    """A delivery that cannot be understood (missing or malformed fields): dead-letter it."""

    def __init__(self, problem):
        self.problem = problem
        super().__init__("invalid webhook delivery: %s" % problem)


def is_delivery(message):
    """Whether a decoded message is a webhook delivery (it has delivery, event and payload)."""
    return isinstance(message, dict) and all(key in message for key in DELIVERY_KEYS)


def job_id_for_delivery(delivery):
    """The scan job id of a delivery: ``gh-<delivery>``, or a digest when that is no valid id."""
    if SAFE_ID_RE.match(delivery) and jobs.ID_RE.match(JOB_ID_PREFIX + "-" + delivery):
        return jobs.job_id(JOB_ID_PREFIX, delivery)
    return jobs.job_id(JOB_ID_PREFIX, hashlib.sha256(delivery.encode("utf-8")).hexdigest()[:40])


def parse_commands(body):
    """The commands in a comment body: ``[{"command": "retest"|"approve", "contexts": [...]}]``.

    A command is a whole line: ``/retest`` and contexts separated by blanks (a line with a word
    that is no valid context name is not a command), or ``/approve`` alone. Lines inside code
    fences (````` or ``~~~``) and quoted lines (``> /retest``) are not commands. Repeated
    commands count once; at most MAX_COMMANDS commands of MAX_CONTEXTS contexts each.
    """
    commands = []
    fenced = False
    for line in (body or "").splitlines():
        text = line.strip()
        if FENCE_RE.match(text):
            fenced = not fenced
            continue
        words = text.split()
        if fenced or not words:
            continue
        if words[0] == "/retest":
            contexts = []
            for word in words[1:]:
                if word not in contexts:
                    contexts.append(word)
            if len(contexts) > MAX_CONTEXTS or not all(jobs.CONTEXT_RE.match(c) for c in contexts):
                continue
            command = {"command": "retest", "contexts": contexts}
        elif words == ["/approve"]:
            command = {"command": "approve", "contexts": []}
        else:
            continue
        if command not in commands:
            commands.append(command)
        if len(commands) == MAX_COMMANDS:
            break
    return commands


def _field(payload, path, kind, what):
    """``payload[path[0]][path[1]]...`` when it is a ``kind``, else raise InvalidDelivery."""
    value = payload
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = {str: "a string", int: "an integer", dict: "an object"}[kind]
        raise InvalidDelivery("%s (%s) is missing or not %s" % (".".join(("payload",) + path), what, expected))
    return value


def _repo(payload):
    repo = _field(payload, ("repository", "full_name"), str, "the repository")
    if not jobs.REPO_RE.match(repo):
        raise InvalidDelivery("payload.repository.full_name %r is not 'owner/name'" % repo[:200])
    return repo


def _sha(payload, path):
    sha = _field(payload, path, str, "a commit")
    if not jobs.SHA_RE.match(sha):
        raise InvalidDelivery("%s %r is not a full commit hash" % (".".join(("payload",) + path), sha[:80]))
    return sha


def _pull_request(payload):
    action = payload.get("action")
    if action not in PULL_REQUEST_ACTIONS:
        return None, "pull_request action %r does not change what to test (scanned: %s)" % (
            action, ", ".join(PULL_REQUEST_ACTIONS))
    repo = _repo(payload)
    number = _field(payload, ("pull_request", "number"), int, "the pull request number")
    sha = _sha(payload, ("pull_request", "head", "sha"))
    job = {"repo": repo, "pull": number, "sha": sha, "args": {"trigger": "pull_request/%s" % action}}
    return job, "pull_request %s: scan pull request %s#%d at %s" % (action, repo, number, sha[:12])


def _push(payload):
    repo = _repo(payload)
    ref = _field(payload, ("ref",), str, "the pushed ref")
    if not ref.startswith(BRANCH_PREFIX):
        return None, "push to %s: not a branch" % ref[:200]
    after = payload.get("after")
    if payload.get("deleted") is True or (isinstance(after, str) and ZERO_SHA_RE.match(after)):
        return None, "push to %s of %s: the branch was deleted" % (ref[:200], repo)
    sha = _sha(payload, ("after",))
    job = {"repo": repo, "ref": ref, "sha": sha, "args": {"trigger": "push"}}
    return job, "push to %s of %s: scan %s" % (ref, repo, sha[:12])


def _issue_comment(payload):
    action = payload.get("action")
    if action not in ISSUE_COMMENT_ACTIONS:
        return None, "issue_comment %s: only new comments carry commands" % action
    number = _field(payload, ("issue", "number"), int, "the issue number")
    if not isinstance(payload["issue"].get("pull_request"), dict):
        return None, "issue_comment on issue #%d, not on a pull request" % number
    repo = _repo(payload)
    body = payload.get("comment", {}).get("body") if isinstance(payload.get("comment"), dict) else None
    if body is not None and not isinstance(body, str):
        raise InvalidDelivery("payload.comment.body is not a string")
    commands = parse_commands(body)
    if not commands:
        return None, "issue_comment on %s#%d has no command (/retest [context ...] or /approve)" % (repo, number)
    user = _field(payload, ("comment", "user", "login"), str, "the comment's author")
    created = payload["comment"].get("created_at")
    if created is not None and not isinstance(created, str):
        raise InvalidDelivery("payload.comment.created_at is not a string")
    for command in commands:
        command["user"] = user
        if created:
            command["created_at"] = created
    job = {"repo": repo, "pull": number, "args": {"trigger": "issue_comment", "commands": commands}}
    return job, "issue_comment on %s#%d by %s: %s" % (repo, number, user, "; ".join(
        " ".join(["/" + c["command"]] + c["contexts"]) for c in commands))


def _status(payload):
    state = payload.get("state")
    if state != "error":
        return None, "status %s: nothing to re-queue (only an error status is scanned)" % str(state)[:32]
    repo = _repo(payload)
    sha = _sha(payload, ("sha",))
    context = payload.get("context") if isinstance(payload.get("context"), str) else "?"
    job = {"repo": repo, "sha": sha, "args": {"trigger": "status/error"}}
    return job, "status error of %s on %s: scan %s at %s" % (context[:100], sha[:12], repo, sha[:12])


# One handler for each event of webhook_events.SCANNED, one reason for each of ACKNOWLEDGED
# (test_events checks it).
HANDLERS = {
    "pull_request": _pull_request,
    "push": _push,
    "issue_comment": _issue_comment,
    "status": _status,
}
IGNORED = {
    "ping": "ping: GitHub checks the hook; nothing to scan",
}


def scan_job_for_delivery(message):
    """The scan job a webhook delivery calls for: ``(job, why)``, or ``(None, why)`` to ignore it.

    ``message`` is the decoded delivery ``{"delivery", "event", "received_at", "payload"}``. The
    job is a valid version-1 job (``jobs.validate_job``). Raise :class:`InvalidDelivery` when the
    delivery is malformed (it cannot be scanned, and retrying it cannot help).
    """
    if not is_delivery(message):
        raise InvalidDelivery("a delivery is an object with the keys %s" % ", ".join(DELIVERY_KEYS))
    delivery, event, payload = (message[key] for key in DELIVERY_KEYS)
    if not isinstance(delivery, str) or not delivery.strip() or len(delivery) > 256:
        raise InvalidDelivery("'delivery' must be the X-GitHub-Delivery id (a string), got %r"
                              % (delivery if not isinstance(delivery, str) else delivery[:80],))
    if not isinstance(event, str) or not event:
        raise InvalidDelivery("'event' must be the X-GitHub-Event name (a string), got %r" % (event,))
    if not isinstance(payload, dict):
        raise InvalidDelivery("'payload' must be an object, got %s" % type(payload).__name__)
    handler = HANDLERS.get(event)
    if handler is None:
        return None, IGNORED.get(event, "%s: not an event testfleet scans for" % event[:64])
    fields, why = handler(payload)
    if fields is None:
        return None, why
    try:
        job = jobs.make_job("scan", job_id_for_delivery(delivery), **fields)
    except jobs.JobError as exc:  # pragma: no cover - the handlers check every field they set
        raise InvalidDelivery("it makes an invalid scan job: %s" % exc)
    return job, why


def job_for_message(body):
    """The job a work-queue message asks for: ``(job, why)``, or ``(None, why)`` to ignore it.

    A webhook delivery is mapped by :func:`scan_job_for_delivery` (``why`` says what it is or why
    it is ignored); anything else must be a valid job (``why`` is None). The body is parsed by
    ``jobs.decode_message``. Raise :class:`~.jobs.JobError` or :class:`InvalidDelivery` for a
    message to dead-letter.
    """
    message = jobs.decode_message(body)
    if is_delivery(message):
        return scan_job_for_delivery(message)
    return jobs.validate_job(message), None
