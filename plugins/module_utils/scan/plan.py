# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scanner's decisions: which contexts of a pull request or branch head need what. No I/O.

Given the test map, a pull request (or a branch and its head), the commit's current statuses
and the time, :func:`plan_pull` / :func:`plan_ref` return :class:`Action` s:

``queue``     post ``queued`` (with ``deadline``), then publish a test job for ``attempt``
``reap``      post ``error`` "deadline passed ...": a queued/running status outlived its
              deadline (a lost message, a dead worker); the *next* scan re-queues it
``approval``  post ``approval``: the author is not on the allow-list and no maintainer has
              approved this commit yet
``give_up``   post ``error`` "gave up after N attempts: ...": the context errored on its last
              attempt (``max_attempts``); only a /retest runs it again

Rules, per context (``docs/statuses.md`` has the table):

- closed, merged and draft PRs, and PRs with a skip label (``no-test``) get nothing; only
  their expired queued/running statuses are reaped, so no status stays pending;
- the contexts are the test map's for the PR's base branch, plus the manual contexts that
  already have a testfleet status on the commit or that a /retest names;
- no status: queue attempt 1. ``success``/``failure``/``superseded``: finished, nothing.
  ``error``: queue attempt+1 while attempt < max_attempts, else give up (once).
  ``queued``/``running``: nothing until the deadline passes, then reap;
- statuses testfleet did not write (``statuses.parse`` returns None) count by their GitHub
  state: pending (someone else's run) is left alone, success/failure are finished, error is
  queued (attempt 1);
- an author not allowed by the test map: each context that would be queued gets ``approval``
  instead (unless it has it already), until the commit is approved: a ``/approve`` (or a
  ``/retest``) from a user with write permission, or any testfleet status other than
  ``approval`` on one of the commit's contexts (so a new push needs a new approval);
- ``/retest`` (the automatic contexts that ended in failure or error, or the named ones whatever
  their state, manual ones included) from a user with write permission queues attempt+1 even
  when finished (or given up); a /retest without names
  covers the automatic contexts, manual ones run only when named. It does not touch a context
  that is queued or running within its deadline, nor a pending status testfleet did not write,
  nor a context whose status was written after the command (``created_at``): a command
  delivered twice runs once.

A command is a dict ``{command: retest|approve, contexts: [...], images: [...], user,
permission, created_at}`` (``images``: a retest of the automatic contexts that boot those VM
images, see ``ContextSpec.image``); ``permission`` (GitHub's: admin, maintain, write, triage,
read, none) is looked up by the caller. Commands from users without write permission are ignored (reported by
:func:`review_pull`).
"""

from __future__ import annotations

import collections
import datetime
import re

from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils import statuses as vocabulary

WRITE_PERMISSIONS = ("admin", "maintain", "write")
COMMANDS = ("retest", "approve")


class Action(collections.namedtuple("Action", "kind context attempt reason spec deadline host")):
    """One thing to do for one context.

    ``attempt``: the attempt to queue (``queue``), or the attempt of the status being replaced
    (``reap``, ``give_up``), 0 for ``approval``. ``reason``: why, for people (and the error
    description of ``reap``/``give_up``). ``spec``: the context's ``testmap.ContextSpec``.
    ``deadline``: for ``queue``, the deadline of the ``queued`` status (aware UTC datetime).
    ``host``: the host of the replaced status (``reap``, ``give_up``), if any.
    """

    __slots__ = ()

    def status(self):
        """The GitHub status this action posts: {state, description, target_url}."""
        kind = {"queue": "queued", "approval": "approval"}.get(self.kind, "error")
        return vocabulary.status_for(kind, attempt=max(self.attempt, 1), host=self.host,
                                     reason=None if self.kind == "queue" else self.reason,
                                     deadline=self.deadline)

    def as_dict(self):
        return {"kind": self.kind, "context": self.context, "attempt": self.attempt,
                "reason": self.reason, "queue": self.spec.queue if self.spec else None,
                "deadline": self.deadline.strftime("%Y-%m-%dT%H:%M:%SZ") if self.deadline else None}


Action.__new__.__defaults__ = (None, None)


class Review(collections.namedtuple("Review", "actions skipped ignored inactive")):
    """A plan with its explanation: ``actions``; ``skipped`` {context: why nothing is done};
    ``ignored`` commands [{command, user, contexts, why}]; ``inactive``: why the PR gets
    nothing (closed, draft, label), else None."""

    __slots__ = ()


def job_id(repo, sha, context, attempt):
    """The deterministic id of the test job of (repo, sha, context, attempt).

    Readable (``test-<owner>_<name>_<context>-<sha12>-<hash>-a<attempt>``, by
    :func:`jobs.job_id`) and unique: the hash covers the full repo (case-folded, as GitHub's
    names), sha and context, so names shortened to fit 128 characters stay distinct.
    """
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ValueError("attempt must be a positive whole number, not %r" % (attempt,))
    tail = "-%s-%s-a%d" % (re.sub(r"[^0-9a-z]", "", sha.lower())[:12],
                           jobs.digest(repo.lower(), sha.lower(), context), attempt)
    return jobs.job_id("test", "%s_%s" % (repo.lower(), context), tail)


def _permission_ok(command):
    return (command.get("permission") or "none") in WRITE_PERMISSIONS


def review_commands(testmap, repo, branch, commands):
    """Split commands into accepted ones (normalised) and ignored ones (with why).

    An accepted command is {command, user, contexts (tuple; empty: all), created_at (aware
    datetime or None)}. /approve ignores context names; a /retest's unknown context names are
    dropped (and reported), a /retest naming only unknown contexts is ignored.
    """
    accepted, ignored = [], []
    known = set(s.name for s in testmap.contexts_for(repo, branch) + testmap.manual_contexts(repo))
    for raw in commands or ():
        command = (raw.get("command") or "").lstrip("/").lower()
        user = raw.get("user")
        names = tuple(raw.get("contexts") or ())
        image_names = tuple(raw.get("images") or ())
        report = {"command": command, "user": user, "contexts": list(names)}
        if image_names:
            report["images"] = list(image_names)
        if command not in COMMANDS:
            ignored.append(dict(report, why="unknown command %r (known: %s)" % (command, ", ".join(COMMANDS))))
            continue
        if not _permission_ok(raw):
            ignored.append(dict(report, why="@%s has %s permission on %s; /%s needs write or above"
                                % (user, raw.get("permission") or "no", repo, command)))
            continue
        if command == "approve":
            names = ()
        elif image_names:
            using = tuple(s.name for s in testmap.contexts_for(repo, branch) if s.image in image_names)
            if not using:
                ignored.append(dict(report, why="no context of %s for branch %s uses the image(s) %s"
                                    % (repo, branch, ", ".join(image_names))))
                continue
            names += tuple(n for n in using if n not in names)
        unknown = [n for n in names if n not in known]
        if unknown:
            ignored.append(dict(report, contexts=unknown, why="%s: not a context of %s for branch %s"
                                % (", ".join(unknown), repo, branch)))
            names = tuple(n for n in names if n in known)
            if not names:
                continue
        created = raw.get("created_at")
        accepted.append({"command": command, "user": user, "contexts": names,
                         "created_at": vocabulary.utc(created) if created else None})
    return accepted, ignored


def _updated(status):
    try:
        return vocabulary.utc(status.get("updated_at"))
    except (TypeError, ValueError):
        return None


def _last_kind(status):
    """The vocabulary kind of a status (GitHub's state for someone else's), or None."""
    if not status:
        return None
    parsed = vocabulary.parse(status)
    return parsed.kind if parsed else status.get("state")


def _retest_for(name, retests, status, automatic):
    """The /retest command that applies to context ``name`` now, or None."""
    for command in retests:
        if command["contexts"] and name not in command["contexts"]:
            continue
        # a bare /retest re-runs what failed or broke; named contexts run whatever their state
        if not command["contexts"] and (not automatic or _last_kind(status) not in ("failure", "error")):
            continue
        updated = _updated(status) if status else None
        if command["created_at"] and updated and updated >= command["created_at"] \
                and _last_kind(status) != "approval":
            # the status was written after the command: it has been acted on (waiting for an
            # approval is not acting on it: a retest by a writer approves)
            continue
        return command
    return None


class _Planner:
    def __init__(self, testmap, repo, branch, statuses, now, commands, approved):
        self.testmap = testmap
        self.repo = repo
        self.policy = testmap.policy(repo)
        self.now = vocabulary.utc(now)
        self.statuses = dict(statuses or {})
        self.parsed = dict((name, vocabulary.parse(status)) for name, status in self.statuses.items())
        self.accepted, self.ignored = review_commands(testmap, repo, branch, commands)
        self.retests = [c for c in self.accepted if c["command"] == "retest"]
        self.automatic = testmap.contexts_for(repo, branch)
        self.approved = approved
        self.actions, self.skipped = [], collections.OrderedDict()

    def contexts(self):
        """(spec, automatic) for each context considered, test map order, manual ones last."""
        chosen = [(spec, True) for spec in self.automatic]
        named = set(n for c in self.retests for n in c["contexts"])
        for spec in self.testmap.manual_contexts(self.repo):
            mine = self.parsed.get(spec.name)
            if spec.name in named or (mine is not None and mine.kind != "approval"):
                chosen.append((spec, False))
        return chosen

    def commit_approved(self):
        """Whether a maintainer approved this commit (a command, or a run already started)."""
        if self.approved or any(c["command"] in COMMANDS for c in self.accepted):
            return True
        names = set(s.name for s in self.automatic + self.testmap.manual_contexts(self.repo))
        return any(p is not None and p.kind != "approval"
                   for name, p in self.parsed.items() if name in names)

    def queue(self, spec, attempt, reason):
        deadline = self.now + datetime.timedelta(seconds=self.policy.queued_timeout)
        self.actions.append(Action("queue", spec.name, attempt, reason, spec, deadline))

    def skip(self, spec, why):
        self.skipped[spec.name] = why

    def expired(self, spec, status, mine):
        """The reap action when a queued/running status passed its deadline, else None."""
        deadline = mine.deadline
        if self.now <= deadline:
            return None
        reason = "deadline passed (%s until %s)" % (mine.kind, vocabulary.format_deadline(deadline))
        if mine.attempt >= self.policy.max_attempts:
            reason = "%s: %s" % (vocabulary.GAVE_UP % mine.attempt, reason)
        return Action("reap", spec.name, mine.attempt, reason, spec, None, mine.host)

    def decide(self, spec, automatic, approved):
        name = spec.name
        status = self.statuses.get(name)
        mine = self.parsed.get(name)
        retest = _retest_for(name, self.retests, status, automatic)
        by = " (/retest by @%s)" % retest["user"] if retest else ""
        if status is None:
            return self.queue_or_approve(spec, 1, "not tested yet" + by, approved, None)
        if mine is None:
            state = status.get("state")
            if retest and state in ("success", "failure", "error"):
                return self.queue_or_approve(spec, 1, "retest of a %s status testfleet did not write%s"
                                             % (state, by), approved, mine)
            if state == "error":
                return self.queue_or_approve(spec, 1, "an error status testfleet did not write",
                                             approved, mine)
            return self.skip(spec, "a %s status testfleet did not write" % state)
        if mine.kind in vocabulary.PENDING:
            action = self.expired(spec, status, mine)
            if action is not None:
                self.actions.append(action)
                return None
            return self.skip(spec, "%s (attempt %d) until %s" % (
                mine.kind, mine.attempt, vocabulary.format_deadline(mine.deadline)))
        if mine.kind == "approval":
            return self.queue_or_approve(spec, 1, "approved", approved, mine)
        if retest:
            return self.queue_or_approve(spec, mine.attempt + 1, "%s on attempt %d%s"
                                         % (mine.kind, mine.attempt, by), approved, mine)
        if mine.kind == "error":
            if mine.gave_up:
                return self.skip(spec, "error: %s" % mine.reason)
            if mine.attempt < self.policy.max_attempts:
                return self.queue_or_approve(spec, mine.attempt + 1, "error on attempt %d: %s"
                                             % (mine.attempt, mine.reason or "no reason given"),
                                             approved, mine)
            reason = "%s: %s" % (vocabulary.GAVE_UP % mine.attempt, mine.reason or "error")
            self.actions.append(Action("give_up", name, mine.attempt, reason, spec, None, mine.host))
            return None
        return self.skip(spec, "finished: %s (attempt %d)" % (mine.kind, mine.attempt))

    def queue_or_approve(self, spec, attempt, reason, approved, mine):
        if approved:
            return self.queue(spec, attempt, reason)
        if mine is not None and mine.kind == "approval":
            return self.skip(spec, "waiting for a maintainer's /approve")
        self.actions.append(Action("approval", spec.name, 0, vocabulary.APPROVAL_TEXT, spec))
        return None

    def reap_only(self):
        for spec, automatic in self.contexts_all():
            mine = self.parsed.get(spec.name)
            if mine is not None and mine.kind in vocabulary.PENDING:
                action = self.expired(spec, self.statuses[spec.name], mine)
                if action is not None:
                    self.actions.append(action)

    def contexts_all(self):
        """Every context of the repository with a status on the commit (for reaping)."""
        seen, result = set(), []
        for spec in self.automatic + self.testmap.manual_contexts(self.repo):
            seen.add(spec.name)
            result.append((spec, True))
        for name in self.statuses:
            if name not in seen:
                spec = self.testmap.context(self.repo, name)
                if spec is not None:
                    seen.add(name)
                    result.append((spec, False))
        return result

    def run(self):
        approved = self.commit_approved()
        for spec, automatic in self.contexts():
            self.decide(spec, automatic, approved)
        return self.actions


def _inactive(pull, skip_labels):
    if pull.get("merged"):
        return "merged"
    if (pull.get("state") or "open") != "open":
        return "closed"
    if pull.get("draft"):
        return "a draft"
    labels = [label if isinstance(label, str) else (label or {}).get("name") for label in pull.get("labels") or ()]
    hit = [label for label in labels if label in skip_labels]
    if hit:
        return "labelled %s" % hit[0]
    return None


def review_pull(testmap, repo, pull, statuses, now, commands=(), trusted=None):
    """:func:`plan_pull` with its explanation: a :class:`Review`."""
    planner = _Planner(testmap, repo, pull.get("base_ref"), statuses, now, commands,
                       approved=False)
    inactive = _inactive(pull, planner.policy.skip_labels)
    if inactive:
        planner.reap_only()
        return Review(planner.actions, {}, planner.ignored, "the pull request is %s" % inactive)
    if trusted is None:
        trusted = testmap.author_allowed(repo, pull.get("author"), pull.get("author_association"))
    planner.approved = bool(trusted)
    planner.run()
    return Review(planner.actions, dict(planner.skipped), planner.ignored, None)


def plan_pull(testmap, repo, pull, statuses, now, commands=(), trusted=None):
    """The actions for pull request ``pull`` (the forge's pull dict) at its head commit.

    ``statuses``: the head's statuses {context: {state, description, target_url, updated_at}}.
    ``now``: the current time (datetime, epoch seconds or ISO text). ``commands``: see the
    module docstring. ``trusted``: whether the author is allowed (the caller may have asked
    GitHub about org membership); None: decide from the test map without org lookups.
    """
    return review_pull(testmap, repo, pull, statuses, now, commands, trusted).actions


def review_ref(testmap, repo, branch, sha, statuses, now, commands=()):
    """:func:`plan_ref` with its explanation: a :class:`Review`."""
    if branch and branch.startswith("refs/heads/"):
        branch = branch[len("refs/heads/"):]
    planner = _Planner(testmap, repo, branch, statuses, now, commands, approved=True)
    planner.run()
    return Review(planner.actions, dict(planner.skipped), planner.ignored, None)


def plan_ref(testmap, repo, branch, sha, statuses, now, commands=()):
    """The actions for commit ``sha``, the head of ``branch`` (a push): the rules of
    :func:`plan_pull` without the author check. ``sha`` is not needed to decide; it is taken
    for symmetry with the job the caller builds."""
    return review_ref(testmap, repo, branch, sha, statuses, now, commands).actions
