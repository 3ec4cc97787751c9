#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: amqp_publish
short_description: Publish one testfleet job to a RabbitMQ queue, confirmed by the broker
version_added: 0.1.0
author:
  - testfleet developers (@testfleet)
description:
  - Validates a job against the testfleet job schema (version 1) and publishes it as one
    persistent JSON message with publisher confirms; the AMQP C(message_id) is the job's C(id).
  - Succeeds only once the broker has confirmed that the message is stored in a queue. An
    invalid job fails before connecting, naming the bad field; nothing is published.
  - Fails when no queue is bound to O(queue) on O(exchange) (the message is returned, not
    stored), when the broker refuses the message, or when it cannot be reached.
  - Every run publishes a new message (a queue has no notion of "already published"), so the
    task always reports a change.
extends_documentation_fragment:
  - testfleet.infra.amqp
  - testfleet.infra.amqp.action_group
  - ansible.builtin.action_common_attributes
options:
  job:
    description:
      - The job, a mapping with the fields of the job message (C(version), C(id), C(kind),
        C(repo), C(sha), C(ref), C(pull), C(context), C(timeout), C(report), C(args)).
      - C(version), C(id) and C(kind) are required; some kinds require more (C(test) needs
        C(repo), C(sha) and C(context); C(scan) needs C(repo); C(release) needs C(repo) and
        C(ref)).
    type: dict
    required: true
  queue:
    description:
      - The queue to deliver to, used as the routing key on O(exchange).
    type: str
    required: true
  exchange:
    description:
      - The exchange to publish to. The topology's direct exchange routes a message to the
        queue named by its routing key.
    type: str
    default: testfleet
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Validates the job and reports a change; does not connect and publishes nothing.
  diff_mode:
    support: full
    details: The published job, as it is sent, is the C(after) side.
seealso:
  - module: testfleet.infra.amqp_get
  - module: testfleet.infra.amqp_topology
"""

EXAMPLES = r"""
- name: Ask for a scan of a repository
  testfleet.infra.amqp_publish:
    queue: events
    job:
      version: 1
      id: "scan-{{ now(utc=true, fmt='%Y%m%d%H%M%S') }}"
      kind: scan
      repo: example/project

- name: Queue one test run on a remote broker
  testfleet.infra.amqp_publish:
    url: amqps://testfleet@broker.example.org/testfleet
    password_file: /etc/testfleet/amqp-password
    queue: tests.public
    job:
      version: 1
      id: test-1234-debian-12
      kind: test
      repo: example/project
      sha: 0123456789abcdef0123456789abcdef01234567
      pull: 1234
      context: debian-12/default
      timeout: 3600
"""

RETURN = r"""
message_id:
  description: The AMQP message_id of the message, the job's C(id).
  returned: success
  type: str
  sample: test-1234-debian-12
queue:
  description: The queue (routing key) the job was published to.
  returned: success
  type: str
  sample: tests.public
exchange:
  description: The exchange the job was published to.
  returned: success
  type: str
  sample: testfleet
job:
  description: The job as it was sent (the decoded message body).
  returned: success
  type: dict
  sample: {version: 1, id: scan-20240101120000, kind: scan, repo: example/project}
"""

import json

from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.jobs import encode_job


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            job=dict(type="dict", required=True),
            queue=dict(type="str", required=True),
            exchange=dict(type="str", default="testfleet"),
        ),
        families=("amqp",),
        supports_check_mode=True,
    )
    queue, exchange = module.params["queue"], module.params["exchange"]
    with module.reporting():
        body = encode_job(module.params["job"])
    job = json.loads(body)
    result = dict(changed=True, message_id=job["id"], queue=queue, exchange=exchange, job=job,
                  diff={"before": {}, "after": job})
    if not module.check_mode:
        with module.reporting(dict(changed=False, queue=queue, exchange=exchange)):
            publisher = module.publisher()
            try:
                publisher.publish(exchange, queue, body, message_id=job["id"])
            finally:
                publisher.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
