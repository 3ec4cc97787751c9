#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: github_status
short_description: Set a testfleet commit status on GitHub, only when it differs
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - Sets the status of one context on one commit in testfleet's status vocabulary (the table
    in the collection's C(docs/statuses.md)). O(state) is mapped to GitHub's state
    (C(queued), C(running) and C(approval) are C(pending); C(superseded) is C(error)) and the
    description is written in testfleet's format, which the scanner reads back (kind, host,
    attempt, deadline, reason), unless O(description) replaces it.
  - Reads the commit's combined status first and posts nothing when the context already has
    the same GitHub state, description and target URL. GitHub keeps every status posted, at
    most 1000 per commit and context, so an identical repeat would only use one up.
  - A status GitHub refuses (HTTP 422, for example a description over 140 characters, or a
    context that has reached 1000 statuses) fails the task with GitHub's message.
extends_documentation_fragment:
  - testfleet.infra.forge
  - ansible.builtin.action_common_attributes
options:
  repo:
    description:
      - The repository, as C(owner/name).
    type: str
    required: true
  sha:
    description:
      - The full SHA of the commit.
    type: str
    required: true
  context:
    description:
      - The status context, for example C(debian-12/default).
    type: str
    required: true
  state:
    description:
      - The testfleet status. C(queued) and C(running) need O(deadline) (unless O(description)
        is given); C(running) names the worker in O(host); C(failure), C(error) and
        C(superseded) say why in O(reason).
    type: str
    required: true
    choices: [queued, running, success, failure, error, superseded, approval]
  description:
    description:
      - The description to post instead of the one testfleet writes. GitHub refuses more than
        140 characters. The scanner does not understand descriptions it did not write.
    type: str
  host:
    description:
      - The worker (host and slot) that runs or ran the job.
    type: str
  reason:
    description:
      - Why a job failed, errored or was superseded; shortened to fit the description.
    type: str
  target_url:
    description:
      - The link of the status, usually the job's live log (C(log.html) in the log store).
    type: str
  attempt:
    description:
      - Which run of this context on this commit it is, from 1 (the scanner counts re-runs).
    type: int
    default: 1
  deadline:
    description:
      - For C(queued) and C(running), when the job must have started or finished (ISO 8601,
        for example C(2024-05-01T12:30:00Z)); after it, the scanner's reaper turns the status
        into C(error).
    type: str
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Reads the current status and reports what would be posted; posts nothing.
  diff_mode:
    support: full
    details: The context's status before and after (C(state), C(description), C(target_url)).
seealso:
  - module: testfleet.infra.github_webhook
"""

EXAMPLES = r"""
- name: A worker starts a test job
  testfleet.infra.github_status:
    token_file: /etc/testfleet/github-token
    repo: example/project
    sha: 0123456789abcdef0123456789abcdef01234567
    context: debian-12/default
    state: running
    host: worker-1/0
    attempt: 1
    deadline: "2024-05-01T12:30:00Z"
    target_url: https://logs.example.org/logs/test-1234-debian-12/log.html

- name: The job failed
  testfleet.infra.github_status:
    token_file: /etc/testfleet/github-token
    repo: example/project
    sha: 0123456789abcdef0123456789abcdef01234567
    context: debian-12/default
    state: failure
    host: worker-1/0
    reason: 3 tests failed
    target_url: https://logs.example.org/logs/test-1234-debian-12/log.html

- name: Same, as a GitHub App installation, against GitHub Enterprise
  testfleet.infra.github_status:
    api_url: https://github.example.org/api/v3
    app_id: 123456
    app_key_file: /etc/testfleet/github-app.pem
    installation_id: 7890
    repo: example/project
    sha: 0123456789abcdef0123456789abcdef01234567
    context: debian-12/default
    state: success
    host: worker-1/0
"""

RETURN = r"""
status:
  description:
    - The context's status after the task (in check mode, the one that would be posted).
    - C(id), C(creator), C(created_at) and C(updated_at) are set when GitHub answered them.
  returned: success
  type: dict
  contains:
    context:
      description: The context.
      type: str
    state:
      description: The GitHub state (C(pending), C(success), C(failure), C(error)).
      type: str
    description:
      description: The description.
      type: str
    target_url:
      description: The link, or null.
      type: str
  sample:
    context: debian-12/default
    state: pending
    description: "running on worker-1/0 · attempt 1 · deadline 2024-05-01T12:30Z"
    target_url: https://logs.example.org/logs/test-1234-debian-12/log.html
github_state:
  description: The GitHub state of O(state).
  returned: always
  type: str
  sample: pending
"""

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule

COMPARED = ("state", "description", "target_url")


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            repo=dict(type="str", required=True),
            sha=dict(type="str", required=True),
            context=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=list(statuses.KINDS)),
            description=dict(type="str"),
            host=dict(type="str"),
            reason=dict(type="str"),
            target_url=dict(type="str"),
            attempt=dict(type="int", default=1),
            deadline=dict(type="str"),
        ),
        required_if=[("state", "queued", ("deadline", "description"), True),
                     ("state", "running", ("deadline", "description"), True)],
        families=("forge",),
        supports_check_mode=True,
    )
    params = module.params
    kind = params["state"]
    github_state = statuses.github_state(kind)
    description = params["description"]
    if description is None:
        try:
            description = statuses.describe(kind, attempt=params["attempt"], host=params["host"],
                                            reason=params["reason"], deadline=params["deadline"])
        except (ValueError, TypeError) as exc:
            module.fail_json(msg="cannot write the %s status: %s" % (kind, exc), github_state=github_state)
    wanted = {"state": github_state, "description": description, "target_url": params["target_url"]}

    failed = dict(changed=False, github_state=github_state)
    with module.reporting(failed):
        client = module.forge_client()
        current = client.combined_status(params["repo"], params["sha"])["statuses"].get(params["context"])
    before = {name: current[name] for name in COMPARED} if current else {}
    result = dict(changed=before != wanted, github_state=github_state, diff={"before": before, "after": wanted})
    status = dict(wanted if result["changed"] else current, context=params["context"])
    if result["changed"] and not module.check_mode:
        with module.reporting(failed):
            status = client.create_status(params["repo"], params["sha"], github_state, params["context"],
                                          description=description, target_url=params["target_url"])
    module.exit_json(status=status, **result)


if __name__ == "__main__":
    main()
