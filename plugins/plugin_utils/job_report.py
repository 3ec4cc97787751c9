# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a worker tells GitHub about a test job, and how it notices that the job is superseded.

A test job carries ``report: {"github": {"context": ..., "attempt": N}}`` when the scanner
queued it (it posted ``queued`` before publishing). The worker then posts, on the job's commit:

- ``running`` (host, attempt, deadline; the target URL is the job's live ``log.html``) when the
  playbook starts (not again when a redelivered job's attempt is already running): best effort,
  a failure is logged and the job runs anyway;
- nothing, when the context's status shows a newer attempt or this attempt already running
  (on a first delivery) or finished: the delivery is a duplicate or was replaced, and is acked;
- the outcome (``success``, ``failure`` with its reason, ``error`` for a job that timed out or
  broke, ``superseded``) once the result and the log are stored, before the delivery is acked.
  If that post fails, the delivery is requeued: the next worker finds the stored result, posts
  it, and acks (nothing runs twice, no status stays ``running``).

A status identical to the current one for the context is never posted again (GitHub keeps at
most 1000 statuses per commit and context).

Cancel on update: while a test job of a pull request runs, :meth:`GitHubReporter.superseded`
is asked every ``check_interval`` seconds whether the pull request is closed or its head moved
(a conditional request: an unchanged pull request costs no rate limit).
"""

from __future__ import annotations

import datetime
import logging

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run

LOG = logging.getLogger("testfleet.worker")


def github_report(job):
    """The job's ``report.github`` mapping, or None when the job is not reported to GitHub."""
    report = job.get("report")
    github = report.get("github") if isinstance(report, dict) else None
    if job.get("kind") != "test" or not isinstance(github, dict):
        return None
    return github


def _deadline(now, seconds):
    return (now + datetime.timedelta(seconds=seconds)).replace(microsecond=0)


class GitHubReporter:
    """Posts a worker's test job statuses through a forge client (module_utils/forge.py)."""

    def __init__(self, client, host_label, deadline_margin=600, check_interval=30.0, now=None):
        self.client = client
        self.host_label = host_label
        self.deadline_margin = deadline_margin
        self.check_interval = check_interval
        self._now = now or (lambda: datetime.datetime.now(datetime.timezone.utc))

    def _current(self, job):
        """(context, attempt, the context's current status or None): one read of GitHub."""
        github = github_report(job)
        context = github.get("context") or job["context"]
        return context, int(github.get("attempt") or 1), \
            self.client.combined_status(job["repo"], job["sha"])["statuses"].get(context)

    def _post(self, job, kind, target_url=None, reason=None, deadline=None, read=None):
        """Post the status unless the context already has exactly this one; True if posted.

        ``read`` is what :meth:`_current` returned, when the caller has read it already."""
        context, attempt, current = read or self._current(job)
        state = statuses.github_state(kind)
        description = statuses.describe(kind, attempt=attempt, host=self.host_label, reason=reason, deadline=deadline)
        if current and (current.get("state"), current.get("description") or "", current.get("target_url") or "") == (
                state, description, target_url or ""):
            return False
        self.client.create_status(job["repo"], job["sha"], state, context, description=description, target_url=target_url)
        LOG.info("job %s: GitHub status %s of %s: %s", job["id"], context, job["sha"][:12], description)
        return True

    def running(self, job, timeout, log_url, redelivered=False):
        """Post ``running`` with a deadline of the job's timeout plus the margin.

        A redelivered job whose attempt is already ``running`` (its first worker died or lost
        the broker) keeps that status: same attempt, same log link, one ``running`` per attempt.
        """
        read = self._current(job)
        if redelivered:
            parsed = statuses.parse(read[2])
            if parsed is not None and parsed.kind == statuses.RUNNING and parsed.attempt == read[1]:
                return False
        deadline = _deadline(self._now(), timeout + self.deadline_margin)
        return self._post(job, statuses.RUNNING, target_url=log_url, deadline=deadline, read=read)

    def finished(self, job, result):
        """Post the outcome of a stored result."""
        kind = job_run.status_kind(result)
        reason = result.get("reason") if kind != statuses.SUCCESS else None
        return self._post(job, kind, target_url=result.get("log_url"), reason=reason)

    def stale(self, job, redelivered):
        """Why this delivery of the job must not run (another attempt owns the context), or None.

        A newer attempt's status means this job was replaced (reaped, re-queued). This attempt
        already running or finished means the message is a duplicate (a rebuild scan published
        it again); ``running`` of this attempt is expected on a redelivery, though: the worker
        that posted it died or gave the job back.
        """
        context, attempt, status = self._current(job)
        current = statuses.parse(status)
        if current is None or current.kind == "approval":
            return None
        if current.attempt > attempt:
            return "%s has attempt %d (%s); this is attempt %d" % (context, current.attempt, current.kind, attempt)
        if current.attempt == attempt and (current.kind in statuses.FINISHED or current.kind == statuses.ERROR
                                           or (current.kind == statuses.RUNNING and not redelivered)):
            return "attempt %d of %s is already %s" % (attempt, context, current.kind)
        return None

    def superseded(self, job):
        """Why the job's pull request no longer wants this run (closed, head moved), or None."""
        if not job.get("pull"):
            return None
        pull = self.client.pull(job["repo"], job["pull"])
        if pull.get("state") != "open":
            return "pull request #%d was %s" % (job["pull"], "merged" if pull.get("merged") else "closed")
        if pull.get("head_sha") and pull["head_sha"] != job["sha"]:
            return "pull request #%d moved on to %s" % (job["pull"], pull["head_sha"][:12])
        return None
