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

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils import topology
from ansible_collections.testfleet.infra.plugins.module_utils.jobs import REPO_RE, SHA_RE
from ansible_collections.testfleet.infra.plugins.module_utils.module import DOMAIN_ERRORS, AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.scan.scanner import BRANCH_PREFIX, PublishFailed, Scanner
from ansible_collections.testfleet.infra.plugins.module_utils.scan.state import ScanState
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import load_testmap


def utc_now():
    """The scan's clock (an aware UTC datetime)."""
    return datetime.datetime.now(datetime.timezone.utc)


def problem(params):
    """What is wrong with the options that the argument spec cannot say, or None."""
    if params["repo"] is not None and not REPO_RE.match(params["repo"]):
        return "repo must be a GitHub repository as 'owner/name', not %r" % params["repo"]
    if params["sha"] is not None and not SHA_RE.match(params["sha"]):
        return "sha must be a full commit hash (40 or 64 lower-case hexadecimal characters), not %r" % params["sha"]
    if params["pull"] is not None and params["pull"] < 1:
        return "pull must be a pull request number (1 or more), not %d" % params["pull"]
    ref = params["ref"]
    if ref is not None and ref.startswith("refs/") and not ref.startswith(BRANCH_PREFIX):
        return "ref must be a branch (main or refs/heads/main), not %r" % ref
    if params["commands"] and params["pull"] is None and ref is None:
        return "commands apply to one pull request (pull) or one branch (ref)"
    for command in params["commands"]:
        try:
            statuses.utc(command["created_at"]) if command.get("created_at") else None
        except (TypeError, ValueError):
            return "commands: created_at must be an ISO 8601 time such as 2024-05-01T10:00:00Z, not %r" % (
                command["created_at"])
    return None


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            repo=dict(type="str"),
            pull=dict(type="int"),
            sha=dict(type="str"),
            ref=dict(type="str"),
            testmap=dict(type="path"),
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
        families=("amqp", "forge", "config"),
        mutually_exclusive=[("pull", "sha"), ("pull", "ref")],
        required_by={"pull": "repo", "sha": "repo", "ref": "repo"},
        supports_check_mode=True,
    )
    params, config = module.params, module.config
    wrong = problem(params)
    testmap = params["testmap"] or (config.testmap if config is not None else None)
    if not wrong and not testmap:
        wrong = "no test map: give the testmap option%s" % (
            ", or a testmap key in %s" % config.path if config is not None else " or a config file")
    if wrong:
        module.fail_json(msg=wrong)
    exchange = params["exchange"] or ((config.topology if config is not None else None) or {}).get(
        "exchange", topology.DEFAULT_TOPOLOGY["exchange"])
    with module.reporting():
        testmap = load_testmap(testmap)
        client = module.forge_client()
        state = ScanState.load(module.forge_settings()["etag_cache_dir"])
    now = utc_now()
    if state.problem:
        module.warn("the scan state %s was not used (%s): every commit is read" % (state.path, state.problem))
    publisher = module.publisher()
    scanner = Scanner(testmap, client, publisher, exchange, now, state, check_mode=module.check_mode,
                      fresh=params["fresh"], rebuild=params["rebuild"])
    failure = None
    try:
        scanner.scan(repo=params["repo"], pull=params["pull"], sha=params["sha"], ref=params["ref"],
                     commands=params["commands"])
    except DOMAIN_ERRORS + (PublishFailed,) as exc:
        failure = exc
    finally:
        publisher.close()
        saved = state.save(now.timestamp())
    for warning in scanner.warnings + ([saved] if saved else []):
        module.warn(warning)
    result = dict(scanner.result, requests=dict(client.stats))
    if module.diff:
        result["diff"] = scanner.diff
    if failure is not None:
        module.fail(failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
