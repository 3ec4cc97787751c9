#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: github_webhook
short_description: Ensure a GitHub repository webhook delivers to a URL, with its events and secret
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - Ensures that the repository O(repo) has exactly one webhook delivering to O(url) with the
    given content type, events, TLS verification and active flag, signed with O(secret); or,
    with O(state=absent), that no webhook delivers to O(url). The URL identifies the hook.
  - GitHub never returns a webhook's secret, only whether it has one, so the module cannot
    tell whether the secret of an existing hook is the one given. With
    O(update_secret=on_create) (the default) the secret is sent when the hook is created, when
    it has no secret although one is given, and whenever the hook is updated for another
    reason; otherwise a hook that may differ only in its secret is left alone and reported
    unchanged. With O(update_secret=always) the secret is sent on every run, which then always
    reports a change; use it once, when rotating the secret.
  - The secret never appears in the result, the diff or the log; they say only whether the
    hook has a secret (C(has_secret)).
extends_documentation_fragment:
  - testfleet.infra.forge
  - ansible.builtin.action_common_attributes
options:
  repo:
    description:
      - The repository, as C(owner/name). The credentials need admin rights on it (a GitHub
        App needs the C(repository_hooks) write permission).
    type: str
    required: true
  url:
    description:
      - Where GitHub delivers, for example the public address of C(testfleet-webhook).
    type: str
    required: true
  secret:
    description:
      - The secret GitHub signs each delivery with (C(X-Hub-Signature-256)); testfleet-webhook
        refuses unsigned deliveries.
      - Without it, the hook is meant to have no secret, and an existing secret is removed.
    type: str
  update_secret:
    description:
      - When to send O(secret) to an existing hook; see the description.
    type: str
    choices: [on_create, always]
    default: on_create
  content_type:
    description:
      - How deliveries are encoded. testfleet-webhook reads C(json).
    type: str
    choices: [json, form]
    default: json
  events:
    description:
      - The events delivered (C(*) for all). The default is what the testfleet scanner acts on (the
        collection's C(plugins/module_utils/webhook_events.py); GitHub sends C(ping) to every hook).
    type: list
    elements: str
    default: [issue_comment, pull_request, push, status]
  active:
    description:
      - Whether GitHub delivers at all.
    type: bool
    default: true
  insecure_ssl:
    description:
      - Deliver without verifying O(url)'s TLS certificate. Only for tests.
    type: bool
    default: false
  state:
    description:
      - C(present) creates or updates the hook; C(absent) deletes every hook delivering to O(url).
    type: str
    choices: [present, absent]
    default: present
notes:
  - A PATCH of a hook's configuration replaces all of it on GitHub (a configuration without
    secret removes the secret), so every update sends the whole configuration, secret included.
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Reads the hooks and reports what would change; creates, updates or deletes nothing.
  diff_mode:
    support: full
    details: The hook's settings before and after, with C(has_secret) in place of the secret.
seealso:
  - module: testfleet.infra.github_status
"""

EXAMPLES = r"""
- name: Deliver the events testfleet scans for to testfleet-webhook
  testfleet.infra.github_webhook:
    token_file: /etc/testfleet/github-admin-token
    repo: example/project
    url: https://ci.example.org/webhook
    secret: "{{ lookup('ansible.builtin.file', '/etc/testfleet/webhook-secret') }}"

- name: Rotate the secret (sent even though GitHub cannot say whether it changed)
  testfleet.infra.github_webhook:
    token_file: /etc/testfleet/github-admin-token
    repo: example/project
    url: https://ci.example.org/webhook
    secret: "{{ new_webhook_secret }}"
    update_secret: always

- name: Stop deliveries to the old address
  testfleet.infra.github_webhook:
    token_file: /etc/testfleet/github-admin-token
    repo: example/project
    url: https://old-ci.example.org/webhook
    state: absent
"""

RETURN = r"""
hook:
  description:
    - The hook after the task (in check mode, as it would be); null when O(state=absent).
    - C(id) is null when check mode would create the hook.
  returned: success
  type: dict
  contains:
    id:
      description: GitHub's id of the hook.
      type: int
    url:
      description: Where it delivers.
      type: str
    content_type:
      description: C(json) or C(form).
      type: str
    events:
      description: The events it delivers, sorted.
      type: list
      elements: str
    active:
      description: Whether it delivers.
      type: bool
    insecure_ssl:
      description: Whether it skips TLS verification.
      type: bool
    has_secret:
      description: Whether deliveries are signed (the secret itself is never returned).
      type: bool
  sample:
    id: 400000001
    url: https://ci.example.org/webhook
    content_type: json
    events: [issue_comment, pull_request, push, status]
    active: true
    insecure_ssl: false
    has_secret: true
changes:
  description:
    - What was (or, in check mode, would be) changed; C(secret) when the secret is sent to an
      existing hook; C(created) or C(deleted) for the whole hook.
  returned: success
  type: list
  elements: str
  sample: [events, secret]
"""

from ansible_collections.testfleet.infra.plugins.module_utils import webhook_events
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule

COMPARED = ("content_type", "events", "active", "insecure_ssl", "has_secret")


def view(hook):
    """What the module shows of a hook dict of the forge client."""
    return {"id": hook["id"], "url": hook["url"], "content_type": hook["content_type"],
            "events": sorted(set(hook["events"])), "active": hook["active"], "insecure_ssl": hook["insecure_ssl"],
            "has_secret": hook["has_secret"]}


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            repo=dict(type="str", required=True),
            url=dict(type="str", required=True),
            secret=dict(type="str", no_log=True),
            update_secret=dict(type="str", choices=["on_create", "always"], default="on_create", no_log=False),
            content_type=dict(type="str", choices=["json", "form"], default="json"),
            events=dict(type="list", elements="str", default=sorted(webhook_events.SCANNED)),
            active=dict(type="bool", default=True),
            insecure_ssl=dict(type="bool", default=False),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        families=("forge",),
        supports_check_mode=True,
    )
    params = module.params
    repo, url, secret = params["repo"], params["url"], params["secret"]
    if params["state"] == "present" and not params["events"]:
        module.fail_json(msg="events must name at least one event (or *)")
    with module.reporting(dict(changed=False)):
        client = module.forge_client()
        hooks = [hook for hook in client.hooks(repo) if hook["url"] == url]

    if params["state"] == "absent":
        result = dict(changed=bool(hooks), hook=None, changes=["deleted"] if hooks else [],
                      diff={"before": view(hooks[0]) if hooks else {}, "after": {}})
        if not module.check_mode:
            done = dict(changed=False)
            with module.reporting(done):
                for hook in hooks:
                    client.delete_hook(repo, hook["id"])
                    done["changed"] = True
        module.exit_json(**result)

    if len(hooks) > 1:
        module.fail_json(msg="%d webhooks of %s deliver to %s (ids %s): remove all but one" % (
            len(hooks), repo, url, ", ".join(str(hook["id"]) for hook in hooks)), changed=False)
    wanted = {"url": url, "content_type": params["content_type"], "events": sorted(set(params["events"])),
              "active": params["active"], "insecure_ssl": params["insecure_ssl"], "has_secret": secret is not None}
    current = view(hooks[0]) if hooks else None
    if current is None:
        changes = ["created"]
    else:
        changes = [name for name in COMPARED if current[name] != wanted[name]]
        if secret is not None and (changes or params["update_secret"] == "always"):
            changes.append("secret")
    after = dict(wanted, id=current["id"] if current else None)
    result = dict(changed=bool(changes), changes=changes, diff={"before": current or {}, "after": after})
    hook = after if changes else current
    if changes and not module.check_mode:
        settings = dict(url=url, secret=secret, events=wanted["events"], content_type=params["content_type"],
                        active=params["active"], insecure_ssl=params["insecure_ssl"])
        with module.reporting(dict(changed=False)):
            hook = view(client.create_hook(repo, **settings) if current is None
                        else client.update_hook(repo, current["id"], **settings))
    module.exit_json(hook=hook, **result)


if __name__ == "__main__":
    main()
