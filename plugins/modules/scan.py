#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: scan
short_description: Decide from GitHub which test contexts need a run, and queue them
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - Reads a repository's open pull requests and branch heads (or one pull request, or one
    commit) and their commit statuses from GitHub, decides with the test map which test
    contexts need a run, and carries the decisions out. GitHub is the source of truth - the
    statuses say what is queued, running or finished, so running the module again right after
    queues nothing.
  - The rules are those of C(docs/statuses.md) and C(plugins/module_utils/scan/plan.py).
    Finished contexts are not re-run; C(error) contexts are re-queued with the next attempt up
    to the test map's C(max_attempts); queued or running contexts are left alone until their
    deadline, then turned into C(error) (the next scan re-queues them); authors not on the
    test map's allow-list get the status C(approval) until a user with write permission
    comments C(/approve). Closed and draft pull requests and those with a skip label
    (C(no-test)) get nothing.
  - For each context to run, the module posts the C(queued) status (with its deadline) first,
    then publishes a C(test) job with publisher confirms to the context's queue. The job's id
    is derived from (repo, sha, context, attempt), so a duplicate scan publishes the same id.
    When a job cannot be published, its context gets an C(error) status saying so (the next
    scan re-queues it) and the module fails.
  - Queues must exist (the C(rabbitmq) role applies the topology); a job for a queue that does
    not exist is not stored and fails as above.
  - With O(etag_cache_dir) (or a O(config) file that implies one), the module keeps a scan state
    there (C(scan-state.json)) - the statuses of each commit as it last read them, plus those it
    posted since. A full repository scan (no O(pull), O(sha), O(ref)) does not read a commit
    again when, from that state, the pull request and the test map as they are now, nothing is
    to be done for it (every context finished, queued or running within its deadline, or
    waiting for an approval; read at most a day ago). A status someone posts triggers a
    C(status) webhook event whose scan reads the commit; if the event is lost, the cached
    deadline passes and the periodic rescan reads it - later, never wrongly. Scans of one pull
    request, commit or branch always read GitHub and refresh the state. See C(docs/statuses.md).
extends_documentation_fragment:
  - testfleet.infra.amqp
  - testfleet.infra.forge
  - ansible.builtin.action_common_attributes
options:
  repo:
    description:
      - The repository, C(owner/name). Without O(pull), O(sha) and O(ref), every open pull
        request of it and the heads of the branches the test map names exactly.
      - Without O(repo), every repository of the test map is scanned that way.
    type: str
  pull:
    description:
      - Scan only this pull request of O(repo), at its current head.
    type: int
  sha:
    description:
      - Scan only this commit of O(repo). With O(ref), as the head of that branch; without,
        as the head of the open pull requests and test-map branches whose head it is.
    type: str
  ref:
    description:
      - Scan only this branch of O(repo) (C(main) or C(refs/heads/main)), at O(sha) or, without
        it, at the branch's current head.
    type: str
  testmap:
    description:
      - The test map file (see C(docs/testmap.md)). Required unless O(config) names one.
    type: path
  config:
    description:
      - testfleet's config file on the managed host. The broker connection (its C(amqp)
        section), the GitHub API URL and token file (its C(forge) section), the test map (its
        C(testmap) key, unless O(testmap) is given) and the exchange (its topology's) come from
        it, so that no secret passes through the play. The module's AMQP options and O(api_url)
        are then not used.
      - The ETag cache is then O(etag_cache_dir) if given, else C(forge-cache/) in the file's
        C(worker.work_dir) when the file has a C(worker) section (each scan is a new process, and a
        cache on disk is what makes an unchanged rescan nearly free), else in memory.
      - Mutually exclusive with O(token), O(token_file) and O(app_id).
    type: path
  commands:
    description:
      - Commands from pull request comments, carried out on O(pull) (or, for an operator, on
        O(ref)). The module asks GitHub for each user's permission on O(repo); commands of
        users without write permission (write, maintain, admin) are ignored and returned in
        RV(refused). The user C(operator:<name>) (the operator CLI's C(testfleet retest); no
        GitHub login has a colon) has admin permission.
    type: list
    elements: dict
    default: []
    suboptions:
      command:
        description:
          - C(retest) queues the named contexts (none named - every automatic context; manual
            contexts only by name) with the next attempt, even finished ones; C(approve) lets
            the tests of a commit by an author not on the allow-list run.
        type: str
        required: true
        choices: [retest, approve]
      contexts:
        description:
          - The contexts a C(retest) names.
        type: list
        elements: str
        default: []
      images:
        description:
          - A C(retest) of the automatic contexts that boot these VM images (a context's
            C(image) in the test map, else the first part of its name). The image refresh job
            (C(playbooks/jobs/image-refresh.yml)) uses it on its pull request.
        type: list
        elements: str
        default: []
      user:
        description:
          - The GitHub login who gave the command.
        type: str
        required: true
      created_at:
        description:
          - When the command was made (the comment's C(created_at), ISO 8601). A context whose
            status was written at or after this time is not re-queued by it, so a command
            delivered twice runs once.
        type: str
  exchange:
    description:
      - The exchange test jobs are published to, with the context's queue as routing key.
      - Default - the O(config) file's topology exchange, else C(testfleet).
    type: str
  fresh:
    description:
      - Read every commit from GitHub, even those the scan state says need nothing (the state is
        refreshed with what is read).
    type: bool
    default: false
  rebuild:
    description:
      - For a cold start after the broker lost its queues. Every context whose status is a
        testfleet C(queued) within its deadline (of an open, testable pull request or a branch
        head) gets its test job published again - the same job id and attempt, without posting
        a status. Everything else is decided as usual. Implies O(fresh).
      - A job that was in fact still queued is then there twice; the worker runs one of them
        and acknowledges the other as a duplicate (it sees the attempt already running or done).
      - C(running) contexts are left to their worker, or to the deadline reaper if it died.
    type: bool
    default: false
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Reads GitHub and returns the plan; posts no status and publishes nothing.
  diff_mode:
    support: full
    details: The descriptions of the statuses posted (C(before) - the previous ones, per C(repo@sha context)).
seealso:
  - module: testfleet.infra.amqp_publish
notes:
  - Run one scan at a time per repository (the C(events) queue has a single active consumer).
    Two scans at the same moment could both see a context without a status and both queue it.
"""

EXAMPLES = r"""
- name: Scan every configured repository with the host's testfleet settings
  testfleet.infra.scan:
    config: /etc/testfleet/config.yml

- name: Scan one pull request after a /retest comment
  testfleet.infra.scan:
    config: /etc/testfleet/config.yml
    repo: example/project
    pull: 1234
    commands:
      - command: retest
        contexts: [debian-12/default]
        user: maintainer
        created_at: "2024-05-01T10:00:00Z"

- name: After the broker lost its queues, publish the jobs of queued contexts again
  testfleet.infra.scan:
    config: /etc/testfleet/config.yml
    rebuild: true

- name: What would a scan of a branch head do (nothing is posted or published)
  testfleet.infra.scan:
    repo: example/project
    ref: main
    testmap: /etc/testfleet/testmap.yml
    token_file: /etc/testfleet/github-token
    url: amqp://testfleet@broker.example.org/testfleet
    password_file: /etc/testfleet/amqp-password
  check_mode: true
  register: plan
"""

RETURN = r"""
plan:
  description: The decisions, one item per commit scanned.
  returned: always
  type: list
  elements: dict
  contains:
    repo:
      description: The repository.
      type: str
    sha:
      description: The commit.
      type: str
    pull:
      description: The pull request (null for a branch head).
      type: int
    ref:
      description: The branch (C(refs/heads/...)) for a branch head, else null.
      type: str
    inactive:
      description: Why the pull request gets nothing (closed, draft, labelled), else null.
      type: str
    actions:
      description: >-
        C({kind, context, attempt, reason, queue, deadline}); C(kind) is C(queue), C(reap),
        C(approval), C(give_up) or (with O(rebuild)) C(republish).
      type: list
      elements: dict
    skipped:
      description: Context -> why nothing is done for it (finished, running until ...).
      type: dict
    cached:
      description: >-
        True when the commit was not read from GitHub: the scan state showed nothing to do
        (C(skipped) then explains it from the state).
      type: bool
  sample:
    - repo: example/project
      sha: 0123456789abcdef0123456789abcdef01234567
      pull: 1234
      ref: null
      inactive: null
      cached: false
      actions:
        - {kind: queue, context: debian-12/default, attempt: 1, reason: not tested yet,
           queue: tests.public, deadline: "2024-05-02T10:00:00Z"}
      skipped: {fedora-40/default: "finished: success (attempt 1)"}
queued:
  description: The test jobs published (none in check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - {repo: example/project, sha: 0123456789abcdef0123456789abcdef01234567, pull: 1234,
       context: debian-12/default, attempt: 1, queue: tests.public,
       job_id: test-example_project_debian-12_default-0123456789ab-5f3a2c1d9e0b-a1}
republished:
  description: >-
    With O(rebuild): the test jobs of C(queued) contexts published again (same job id and
    attempt; no status posted). None in check mode.
  returned: always
  type: list
  elements: dict
  sample:
    - {repo: example/project, sha: 0123456789abcdef0123456789abcdef01234567, pull: 1234,
       context: debian-12/default, attempt: 1, queue: tests.public,
       job_id: test-example_project_debian-12_default-0123456789ab-5f3a2c1d9e0b-a1}
reaped:
  description: Contexts whose queued or running status passed its deadline and became C(error).
  returned: always
  type: list
  elements: dict
  sample: [{repo: example/project, sha: 0123456789abcdef0123456789abcdef01234567, pull: 1234,
            context: debian-12/default, attempt: 1, reason: "deadline passed (running until 2024-05-01T12:32Z)"}]
approval:
  description: Contexts that got the C(approval) status.
  returned: always
  type: list
  elements: dict
  sample: [{repo: example/project, sha: 0123456789abcdef0123456789abcdef01234567, pull: 1234,
            context: debian-12/default}]
gave_up:
  description: Contexts left as C(error) after their last attempt.
  returned: always
  type: list
  elements: dict
  sample: [{repo: example/project, sha: 0123456789abcdef0123456789abcdef01234567, pull: 1234,
            context: debian-12/default, attempt: 3, reason: "gave up after 3 attempts: clone failed"}]
refused:
  description: Commands that were ignored, with why (no write permission, unknown context).
  returned: always
  type: list
  elements: dict
  sample: [{command: retest, user: someone, contexts: [], why: "@someone has read permission on example/project; /retest needs write or above"}]
requests:
  description: >-
    The GitHub requests of this run: C(requests) (all), C(counted) (those that count against the
    rate limit), C(not_modified) (answered 304 from the ETag cache) and C(writes).
  returned: always
  type: dict
  sample: {requests: 12, counted: 5, not_modified: 7, writes: 2}
"""

import datetime

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.module_utils.forge import client as forge
from ansible_collections.testfleet.infra.plugins.module_utils.scan import plan as scan_plan
from ansible_collections.testfleet.infra.plugins.module_utils.scan import state as scan_state
from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils import topology
from ansible_collections.testfleet.infra.plugins.module_utils.amqp_module import AmqpModule
from ansible_collections.testfleet.infra.plugins.module_utils import forge_module
from ansible_collections.testfleet.infra.plugins.module_utils.forge_module import (
    APP_OPTIONS, CREDENTIAL_OPTIONS, FORGE_ARGUMENT_SPEC)
from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils.jobs import JobError, REPO_RE, SHA_RE, encode_job
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import TestMapError, load_testmap

BRANCH_PREFIX = "refs/heads/"


def utc_now():
    """The scan's clock (an aware UTC datetime)."""
    return datetime.datetime.now(datetime.timezone.utc)


OPERATOR_PREFIX = "operator:"


class ScanModule(AmqpModule):
    """The AMQP module base with the forge options, where a config file may stand for both."""

    def __init__(self, argument_spec, **kwargs):
        spec = dict(FORGE_ARGUMENT_SPEC)
        spec.update(argument_spec)
        super().__init__(argument_spec=spec, **kwargs)
        self.config = None
        if self.params["config"]:
            try:
                self.config = config_lib.load(self.params["config"])
            except config_lib.ConfigError as exc:
                self.fail_json(msg=str(exc))

    def amqp_settings(self):
        if self.config is not None:
            return self.config.amqp_settings(connection_name="ansible %s" % self._name)
        return super().amqp_settings()

    def testmap_path(self):
        path = self.params["testmap"] or (self.config.testmap if self.config is not None else None)
        if not path:
            self.fail_json(msg="no test map: give the testmap option%s" % (
                ", or a testmap key in %s" % self.config.path if self.config is not None else " or a config file"))
        return path

    def exchange(self):
        if self.params["exchange"]:
            return self.params["exchange"]
        description = (self.config.topology if self.config is not None else None) or {}
        return description.get("exchange", topology.DEFAULT_TOPOLOGY["exchange"])

    def forge_settings(self):
        try:
            return forge_module.client_settings(self.params, self.config)
        except forge.ForgeError as exc:
            self.fail_json(msg="%s (the scan posts commit statuses)" % exc)

    def client(self):
        try:
            return forge.ForgeClient(**self.forge_settings())
        except forge.ForgeError as exc:
            self.fail_json(msg=str(exc), http_status=exc.status)

    def scan_state(self):
        """The scan state kept next to the ETag cache (an empty one without a cache directory)."""
        state = scan_state.ScanState.load(self.forge_settings()["etag_cache_dir"])
        if state.problem:
            self.warn("the scan state %s was not used (%s): every commit is read" % (state.path, state.problem))
        return state


class Scanner:
    """Reads GitHub, plans, and carries the plan out (unless in check mode)."""

    def __init__(self, module, testmap, client, now, state=None):
        self.module = module
        self.testmap = testmap
        self.client = client
        self.now = now
        self.state = state if state is not None else scan_state.ScanState()
        self.rebuild = bool(module.params.get("rebuild"))
        self.fresh = bool(module.params.get("fresh")) or self.rebuild
        self.check_mode = module.check_mode
        self.exchange = module.exchange()
        self.connection = None
        self.publisher = None
        self.permissions = {}
        self.republishing = set()  # job ids: a commit may be the head of a pull request and a branch
        self.result = {"changed": False, "plan": [], "queued": [], "republished": [], "reaped": [], "approval": [],
                       "gave_up": [], "refused": []}
        self.diff = {"before": {}, "after": {}}

    # --- reading ------------------------------------------------------------------------------
    def commands(self, repo):
        """The module's commands with each user's permission on ``repo`` (asked once per user).

        ``operator:<name>`` (the operator CLI's user, which no GitHub login can be: only those who
        may publish to the broker can send it) has admin permission.
        """
        result = []
        for command in self.module.params["commands"] or ():
            user = command["user"]
            if user.startswith(OPERATOR_PREFIX):
                self.permissions[(repo, user)] = "admin"
            if (repo, user) not in self.permissions:
                self.permissions[(repo, user)] = self.client.permission(repo, user)
            result.append(dict(command, permission=self.permissions[(repo, user)]))
        return result

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
            try:
                sha = self.client.branch_sha(repo, branch)
            except forge.ForgeError as exc:
                if exc.status != 404:
                    raise
                self.module.warn("%s: the test map names the branch %s, which does not exist" % (repo, branch))
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
            except forge.ForgeError as exc:
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
                self.publish(repo, sha, pull, ref, action, self.result["republished"])
        for action in review.actions:
            if self.check_mode:
                self.result["changed"] = True
                self.note_diff(repo, sha, action.context, current, action.status())
                continue
            if action.kind == "queue":
                self.queue(repo, sha, pull, ref, action, current)
            else:
                self.post(repo, sha, action.context, action.status(), current)
                if action.kind == "reap":
                    self.result["reaped"].append(dict(where, context=action.context, attempt=action.attempt,
                                                      reason=action.reason))
                elif action.kind == "give_up":
                    self.result["gave_up"].append(dict(where, context=action.context, attempt=action.attempt,
                                                       reason=action.reason))
                else:
                    self.result["approval"].append(dict(where, context=action.context))

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
        spec = action.spec
        return jobs.make_job("test", scan_plan.job_id(repo, sha, action.context, action.attempt),
                             repo=repo, sha=sha, pull=pull, ref=ref, context=action.context, timeout=spec.timeout,
                             report={"github": {"context": action.context, "attempt": action.attempt}},
                             args=spec.args or None)

    def connect(self):
        if self.publisher is None:
            if not amqp.HAS_PIKA:
                self.module.connect()  # fails saying that pika is missing
            self.connection = amqp.connect(self.module.amqp_settings())
            self.publisher = amqp.ConfirmedPublisher(self.connection)

    def publish(self, repo, sha, pull, ref, action, report):
        """Publish the job of ``action`` again (rebuild): no status is posted."""
        job = self.job(repo, sha, pull, ref, action)
        body = encode_job(job)
        self.connect()
        try:
            self.publisher.publish(self.exchange, action.spec.queue, body, message_id=job["id"])
        except amqp.AmqpError as exc:
            raise PublishFailed("the test job %s could not be published again: %s; its queued status stays "
                                "until its deadline" % (job["id"], exc))
        self.result["changed"] = True
        report.append({"repo": repo, "sha": sha, "pull": pull, "context": action.context,
                       "attempt": action.attempt, "queue": action.spec.queue, "job_id": job["id"]})

    def queue(self, repo, sha, pull, ref, action, current):
        job = self.job(repo, sha, pull, ref, action)
        body = encode_job(job)
        # connected before the first queued status: without a broker nothing is posted
        self.connect()
        self.post(repo, sha, action.context, action.status(), current)
        try:
            self.publisher.publish(self.exchange, action.spec.queue, body, message_id=job["id"])
        except amqp.AmqpError as exc:
            reason = "the test job could not be published: %s" % exc
            try:
                self.post(repo, sha, action.context, statuses.status_for(
                    "error", attempt=action.attempt, reason=reason), current)
            except forge.ForgeError as post_error:
                reason += "; its queued status stays until its deadline (%s)" % post_error
            raise PublishFailed(reason)
        self.result["queued"].append({"repo": repo, "sha": sha, "pull": pull, "context": action.context,
                                      "attempt": action.attempt, "queue": action.spec.queue, "job_id": job["id"]})

    def close(self):
        if self.connection is not None and self.connection.is_open:
            try:
                self.connection.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass


class PublishFailed(Exception):
    pass


def _check_params(module):
    params = module.params
    repo = params["repo"]
    if repo is not None and not REPO_RE.match(repo):
        module.fail_json(msg="repo must be a GitHub repository as 'owner/name', not %r" % repo)
    if params["sha"] is not None and not SHA_RE.match(params["sha"]):
        module.fail_json(msg="sha must be a full commit hash (40 or 64 lower-case hexadecimal characters), not %r"
                         % params["sha"])
    if params["pull"] is not None and params["pull"] < 1:
        module.fail_json(msg="pull must be a pull request number (1 or more), not %d" % params["pull"])
    ref = params["ref"]
    if ref is not None and ref.startswith("refs/") and not ref.startswith(BRANCH_PREFIX):
        module.fail_json(msg="ref must be a branch (main or refs/heads/main), not %r" % ref)
    if params["commands"] and params["pull"] is None and ref is None:
        module.fail_json(msg="commands apply to one pull request (pull) or one branch (ref)")
    for command in params["commands"] or ():
        if command.get("created_at"):
            try:
                statuses.utc(command["created_at"])
            except (TypeError, ValueError):
                module.fail_json(msg="commands: created_at must be an ISO 8601 time such as "
                                     "2024-05-01T10:00:00Z, not %r" % command["created_at"])


def run(module, scanner):
    params = module.params
    repo = params["repo"]
    if repo and repo.lower() not in [r.lower() for r in scanner.testmap.repos]:
        module.warn("%s is not in the test map %s: nothing to test" % (repo, scanner.testmap.source))
        return
    if params["pull"] is not None:
        scanner.scan_pull(repo, scanner.client.pull(repo, params["pull"]), scanner.commands(repo))
    elif params["ref"] is not None:
        branch = params["ref"][len(BRANCH_PREFIX):] if params["ref"].startswith(BRANCH_PREFIX) else params["ref"]
        sha = params["sha"] or scanner.client.branch_sha(repo, branch)
        scanner.scan_ref(repo, branch, sha, scanner.commands(repo))
    elif params["sha"] is not None:
        scanner.scan_sha(repo, params["sha"])
    else:
        for name in [repo] if repo else scanner.testmap.repos:
            scanner.scan_repo(name)
        if not repo:
            scanner.state.forget_repos_except(scanner.testmap.repos)


def main():
    credentials = CREDENTIAL_OPTIONS + ("config",)
    module = ScanModule(
        argument_spec=dict(
            repo=dict(type="str"),
            pull=dict(type="int"),
            sha=dict(type="str"),
            ref=dict(type="str"),
            testmap=dict(type="path"),
            config=dict(type="path"),
            commands=dict(type="list", elements="dict", default=[], options=dict(
                command=dict(type="str", required=True, choices=["retest", "approve"]),
                contexts=dict(type="list", elements="str", default=[]),
                images=dict(type="list", elements="str", default=[]),
                user=dict(type="str", required=True),
                created_at=dict(type="str"),
            )),
            exchange=dict(type="str"),
            fresh=dict(type="bool", default=False),
            rebuild=dict(type="bool", default=False),
        ),
        mutually_exclusive=[credentials, ("pull", "sha"), ("pull", "ref")],
        required_together=[APP_OPTIONS],
        required_one_of=[credentials],
        required_by={"pull": "repo", "sha": "repo", "ref": "repo"},
        supports_check_mode=True,
    )
    _check_params(module)
    try:
        testmap = load_testmap(module.testmap_path())
    except TestMapError as exc:
        module.fail_json(msg=str(exc))
    client = module.client()
    now = utc_now()
    state = module.scan_state()
    scanner = Scanner(module, testmap, client, now, state)
    failure = None
    try:
        run(module, scanner)
    except forge.ForgeError as exc:
        failure = dict(msg=str(exc), http_status=exc.status)
    except PublishFailed as exc:
        failure = dict(msg=str(exc))
    except JobError as exc:  # pragma: no cover - the test map and the checks above make valid jobs
        failure = dict(msg="cannot build the test job: %s" % exc)
    except amqp.AmqpError as exc:
        failure = dict(msg=str(exc), error=exc.__class__.__name__)
    finally:
        scanner.close()
        problem = state.save(now.timestamp())
        if problem:
            module.warn(problem)
    result = scanner.result
    result["requests"] = dict(client.stats)
    if module._diff:
        result["diff"] = scanner.diff
    if failure is not None:
        module.fail_json(**dict(result, **failure))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
