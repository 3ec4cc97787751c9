# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scanner: reads GitHub, plans with :mod:`.plan`, and carries the plan out.

``Scanner(testmap, client, publisher, exchange, now, state)`` then ``scanner.scan(repo=...,
pull=..., sha=..., ref=..., commands=[...])`` returns the result (``plan``, ``queued``,
``republished``, ``reaped``, ``approval``, ``gave_up``, ``refused``, ``changed``); what it
would warn about is in :attr:`Scanner.warnings` and the statuses it posted (or would post, in
check mode) in :attr:`Scanner.diff`. It raises ForgeError (GitHub), AmqpError (the broker
cannot be reached) and :class:`PublishFailed` (a job was not taken: its context got an
``error`` status, or keeps its ``queued`` one until the deadline); :attr:`Scanner.result` then
holds what was done before.

``client`` is a :class:`~forge.client.ForgeClient`. ``publisher`` is anything with
``ready()`` (called before the first ``queued`` status is posted: without a broker nothing is
posted; raises AmqpError) and ``publish(exchange, routing_key, body, message_id=...)``
(returns once the broker has the message; raises AmqpError when it does not). The module
passes the confirmed AMQP publisher; tests pass one that records what it is given.
``state`` is the :class:`~.state.ScanState` (loading and saving it is the caller's).
"""

from __future__ import annotations

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.forge.client import ForgeError
from ansible_collections.testfleet.infra.plugins.module_utils.scan import plan as scan_plan
from ansible_collections.testfleet.infra.plugins.module_utils.scan import state as scan_state

BRANCH_PREFIX = "refs/heads/"
OPERATOR_PREFIX = "operator:"


class PublishFailed(Exception):
    """A test job the broker did not take; the message says what became of its status."""


class Scanner:
    """Reads GitHub, plans, and carries the plan out (unless ``check_mode``)."""

    def __init__(self, testmap, client, publisher, exchange, now, state=None, check_mode=False, fresh=False,
                 rebuild=False):
        self.testmap = testmap
        self.client = client
        self.publisher = publisher
        self.exchange = exchange
        self.now = now
        self.state = state if state is not None else scan_state.ScanState()
        self.check_mode = check_mode
        self.rebuild = rebuild
        self.fresh = fresh or rebuild
        self.permissions = {}
        self.republishing = set()  # job ids: a commit may be the head of a pull request and a branch
        self.result = {"changed": False, "plan": [], "queued": [], "republished": [], "reaped": [], "approval": [],
                       "gave_up": [], "refused": []}
        self.diff = {"before": {}, "after": {}}
        self.warnings = []

    def scan(self, repo=None, pull=None, sha=None, ref=None, commands=()):
        """One pull request, one branch (at ``sha`` or its head), the pull requests and
        branches whose head is ``sha``, or every head of ``repo`` (of every repository of the
        test map without ``repo``). Return :attr:`result`."""
        if repo and repo.lower() not in [r.lower() for r in self.testmap.repos]:
            self.warnings.append("%s is not in the test map %s: nothing to test" % (repo, self.testmap.source))
        elif pull is not None:
            self.scan_pull(repo, self.client.pull(repo, pull), self.commands(repo, commands))
        elif ref is not None:
            branch = ref[len(BRANCH_PREFIX):] if ref.startswith(BRANCH_PREFIX) else ref
            self.scan_ref(repo, branch, sha or self.client.branch_sha(repo, branch), self.commands(repo, commands))
        elif sha is not None:
            self.scan_sha(repo, sha)
        else:
            for name in [repo] if repo else self.testmap.repos:
                self.scan_repo(name)
            if not repo:
                self.state.forget_repos_except(self.testmap.repos)
        return self.result

    # --- reading ------------------------------------------------------------------------------
    def commands(self, repo, commands):
        """``commands`` with each user's permission on ``repo`` (asked once per user).

        ``operator:<name>`` (the operator CLI's user, which no GitHub login can be: only those who
        may publish to the broker can send it) has admin permission.
        """
        result = []
        for command in commands or ():
            user = command["user"]
            if user.startswith(OPERATOR_PREFIX):
                self.permissions[(repo, user)] = "admin"
            if (repo, user) not in self.permissions:
                self.permissions[(repo, user)] = self.client.permission(repo, user)
            result.append(dict(command, permission=self.permissions[(repo, user)]))
        return result

    def branch_sha(self, repo, branch):
        """The head of ``branch``, or None (with a warning) when the test map names a branch
        that does not exist."""
        try:
            return self.client.branch_sha(repo, branch)
        except ForgeError as exc:
            if exc.status != 404:
                raise
        self.warnings.append("%s: the test map names the branch %s, which does not exist" % (repo, branch))
        return None

    def scan_repo(self, repo):
        """Every open pull request and test-map branch head of ``repo``; a commit the scan state
        shows nothing to do for is not read (unless fresh)."""
        heads = set()
        for pull in sorted(self.client.pulls(repo), key=lambda p: p["number"]):
            heads.add(pull["head_sha"])
            review = None if self.fresh else scan_state.settled_review(
                self.testmap, repo, self.known(repo, pull["head_sha"]), self.now, pull=pull)
            if review is not None:
                self.note_plan(repo, pull["head_sha"], pull["number"], None, review, cached=True)
            else:
                self.scan_pull(repo, pull, ())
        for branch in self.testmap.head_branches(repo):
            sha = self.branch_sha(repo, branch)
            if sha is None:
                continue
            heads.add(sha)
            review = None if self.fresh else scan_state.settled_review(
                self.testmap, repo, self.known(repo, sha), self.now, branch=branch)
            if review is not None:
                self.note_plan(repo, sha, None, BRANCH_PREFIX + branch, review, cached=True)
            else:
                self.scan_ref(repo, branch, sha, ())
        self.state.forget_others(repo, heads)

    def known(self, repo, sha):
        return self.state.statuses(repo, sha, self.now.timestamp())

    def read_statuses(self, repo, sha):
        """The commit's statuses from GitHub (and into the scan state)."""
        current = self.client.combined_status(repo, sha)["statuses"]
        self.state.remember_read(repo, sha, current, self.now.timestamp())
        return current

    def scan_sha(self, repo, sha):
        for pull in self.client.pulls(repo):
            if pull["head_sha"] == sha:
                self.scan_pull(repo, pull, ())
        for branch in self.testmap.head_branches(repo):
            try:
                if self.client.branch_sha(repo, branch) == sha:
                    self.scan_ref(repo, branch, sha, ())
            except ForgeError as exc:
                if exc.status != 404:
                    raise

    def scan_pull(self, repo, pull, commands):
        sha = pull["head_sha"]
        current = self.read_statuses(repo, sha)
        trusted = self.testmap.author_allowed(repo, pull.get("author"), pull.get("author_association"))
        review = scan_plan.review_pull(self.testmap, repo, pull, current, self.now, commands, trusted=trusted)
        if not trusted and any(a.kind == "approval" for a in review.actions):
            # the allow-list's organisations cost a request each: asked only when they decide
            if self.testmap.author_allowed(repo, pull.get("author"), pull.get("author_association"),
                                           is_org_member=self.client.is_org_member):
                review = scan_plan.review_pull(self.testmap, repo, pull, current, self.now, commands, trusted=True)
        self.carry_out(repo, sha, pull["number"], None, review, current, pull.get("base_ref"))

    def scan_ref(self, repo, branch, sha, commands):
        current = self.read_statuses(repo, sha)
        review = scan_plan.review_ref(self.testmap, repo, branch, sha, current, self.now, commands)
        self.carry_out(repo, sha, None, BRANCH_PREFIX + branch, review, current, branch)

    # --- writing ------------------------------------------------------------------------------
    def note_plan(self, repo, sha, pull, ref, review, cached=False, extra=()):
        self.result["plan"].append({
            "repo": repo, "sha": sha, "pull": pull, "ref": ref, "inactive": review.inactive, "cached": cached,
            "actions": [a.as_dict() for a in list(review.actions) + list(extra)], "skipped": dict(review.skipped)})
        self.result["refused"].extend(review.ignored)

    def carry_out(self, repo, sha, pull, ref, review, current, branch):
        republish = self.to_republish(repo, sha, branch, review, current) if self.rebuild else []
        self.note_plan(repo, sha, pull, ref, review, extra=republish)
        where = {"repo": repo, "sha": sha, "pull": pull}
        for action in republish:
            if self.check_mode:
                self.result["changed"] = True
            else:
                self.republish(repo, sha, pull, ref, action)
        for action in review.actions:
            if self.check_mode:
                self.result["changed"] = True
                self.note_diff(repo, sha, action.context, current, action.status())
                continue
            if action.kind == "queue":
                self.queue(repo, sha, pull, ref, action, current)
                continue
            self.post(repo, sha, action.context, action.status(), current)
            done = dict(where, context=action.context)
            if action.kind == "approval":
                self.result["approval"].append(done)
            else:
                self.result["reaped" if action.kind == "reap" else "gave_up"].append(
                    dict(done, attempt=action.attempt, reason=action.reason))

    def note_diff(self, repo, sha, context, current, status):
        key = "%s@%s %s" % (repo, sha, context)
        self.diff["before"].setdefault(key, (current.get(context) or {}).get("description"))
        self.diff["after"][key] = status["description"]

    def post(self, repo, sha, context, status, current):
        posted = self.client.create_status(repo, sha, status["state"], context, description=status["description"],
                                           target_url=status["target_url"])
        self.result["changed"] = True
        self.state.remember_post(repo, sha, context, status, self.now.timestamp(),
                                 updated_at=(posted or {}).get("updated_at") or self.now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.note_diff(repo, sha, context, current, status)

    def to_republish(self, repo, sha, branch, review, current):
        """``republish`` actions for the contexts whose status is our ``queued`` within its
        deadline and that nothing else is done for (an active pull request or a branch head)."""
        if review.inactive:
            return []
        acted = set(action.context for action in review.actions)
        result = []
        for context in sorted(current):
            mine = statuses.parse(current[context])
            if mine is None or mine.kind != "queued" or mine.deadline < self.now or context in acted:
                continue
            spec = self.testmap.context(repo, context, branch)
            ident = scan_plan.job_id(repo, sha, context, mine.attempt) if spec else None
            if spec is None or ident in self.republishing:
                continue
            self.republishing.add(ident)
            result.append(scan_plan.Action("republish", context, mine.attempt, "rebuild: %s (attempt %d) until %s" % (
                mine.kind, mine.attempt, statuses.format_deadline(mine.deadline)), spec, mine.deadline))
        return result

    def job(self, repo, sha, pull, ref, action):
        """The test job of ``action``: (its id, its message body)."""
        spec = action.spec
        job = jobs.make_job("test", scan_plan.job_id(repo, sha, action.context, action.attempt),
                            repo=repo, sha=sha, pull=pull, ref=ref, context=action.context, timeout=spec.timeout,
                            report={"github": {"context": action.context, "attempt": action.attempt}},
                            args=spec.args or None)
        return job["id"], jobs.encode_job(job)

    def published(self, report, repo, sha, pull, action, ident):
        self.result[report].append({"repo": repo, "sha": sha, "pull": pull, "context": action.context,
                                    "attempt": action.attempt, "queue": action.spec.queue, "job_id": ident})

    def republish(self, repo, sha, pull, ref, action):
        """Publish the job of ``action`` again (rebuild): no status is posted."""
        ident, body = self.job(repo, sha, pull, ref, action)
        self.publisher.ready()
        try:
            self.publisher.publish(self.exchange, action.spec.queue, body, message_id=ident)
        except amqp.AmqpError as exc:
            raise PublishFailed("the test job %s could not be published again: %s; its queued status stays "
                                "until its deadline" % (ident, exc))
        self.result["changed"] = True
        self.published("republished", repo, sha, pull, action, ident)

    def queue(self, repo, sha, pull, ref, action, current):
        ident, body = self.job(repo, sha, pull, ref, action)
        self.publisher.ready()  # before the first queued status: without a broker nothing is posted
        self.post(repo, sha, action.context, action.status(), current)
        try:
            self.publisher.publish(self.exchange, action.spec.queue, body, message_id=ident)
        except amqp.AmqpError as exc:
            reason = "the test job could not be published: %s" % exc
            try:
                self.post(repo, sha, action.context, statuses.status_for(
                    "error", attempt=action.attempt, reason=reason), current)
            except ForgeError as post_error:
                reason += "; its queued status stays until its deadline (%s)" % post_error
            raise PublishFailed(reason)
        self.published("queued", repo, sha, pull, action, ident)
