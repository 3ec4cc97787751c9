#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: github_image_refs
short_description: Collect the VM images that branches and open pull requests reference
version_added: 0.2.0
description:
  - Reads the image references file (C(.testfleet/images.yml) by default; see C(docs/images.md))
    at the head of every branch and every open pull request of the given repositories and
    returns every image they reference - the O(testfleet.infra.image_prune#module:keep) list
    of C(testfleet.infra.image_prune).
  - Reads only; nothing is changed. A references file that cannot be read as one fails the task
    (pruning on incomplete knowledge could remove an image a branch still needs), unless
    O(ignore_invalid) is set.
  - Each head costs one request, and an unchanged file is a C(304) answer from the ETag cache
    (O(etag_cache_dir), or the config file's) that costs no rate limit.
extends_documentation_fragment:
  - testfleet.infra.forge
  - ansible.builtin.action_common_attributes
options:
  repos:
    description:
      - The repositories, C(owner/name). Default - those of the test map that O(config) names.
    type: list
    elements: str
  refs_file:
    description:
      - Path of the references file in each repository.
    type: str
    default: .testfleet/images.yml
  ignore_invalid:
    description:
      - Report a references file that is not valid in RV(invalid) instead of failing.
    type: bool
    default: false
  config:
    description:
      - testfleet's config file on the managed host; its C(forge) section gives the API URL and
        the token file, its C(testmap) the default O(repos).
      - Mutually exclusive with O(token), O(token_file) and O(app_id).
    type: path
attributes:
  check_mode:
    support: full
    details: Reads only; the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - testfleet developers (@testfleet)
"""

EXAMPLES = r"""
- name: Collect the images the branches and pull requests of the tested repositories use
  testfleet.infra.github_image_refs:
    config: /etc/testfleet/config.yml
  register: used

- name: Remove the others, once older than 30 days
  testfleet.infra.image_prune:
    store_url: s3://ci-images/images
    keep: "{{ used.refs }}"
    older_than_days: 30
"""

RETURN = r"""
refs:
  description: Every referenced image, C(<name>-<sha256>), sorted, each once.
  returned: success
  type: list
  elements: str
  sample: [debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e]
heads:
  description: Each head read - repository, C(branch) or C(pull), its SHA and the references
    found there (none when it has no references file).
  returned: success
  type: list
  elements: dict
  sample: [{repo: example/project, branch: main, sha: 9f1c..., refs: [debian-12-0f2c...]}, {repo: example/project, pull: 42, sha: 3a2b..., refs: []}]
invalid:
  description: Heads whose references file is not valid, with the problem (only with O(ignore_invalid)).
  returned: success
  type: list
  elements: dict
  sample: []
requests:
  description: GitHub requests made (C(requests), C(counted), C(not_modified), C(writes)).
  returned: always
  type: dict
  sample: {requests: 14, counted: 3, not_modified: 11, writes: 0}
"""

from ansible_collections.testfleet.infra.plugins.module_utils.images import refs as image_refs
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import load_testmap


def heads_of(client, repo):
    """Every branch head and open pull request head of ``repo``: [(kind, name, sha)]."""
    heads = [("branch", branch["name"], branch["sha"]) for branch in client.branches(repo)]
    heads += [("pull", pull["number"], pull["head_sha"]) for pull in client.pulls(repo)]
    return heads


def collect(client, repos, path, ignore_invalid):
    """``(refs, heads, invalid)`` of the references files at every head of ``repos``."""
    refs, heads, invalid, read = set(), [], [], {}
    for repo in repos:
        for kind, name, sha in heads_of(client, repo):
            head = {"repo": repo, kind: name, "sha": sha}
            key = (repo, sha)
            if key not in read:  # a pull request's head is often also a branch head
                found = client.file(repo, path, sha)
                try:
                    text = found["content"].decode("utf-8") if found else ""
                    read[key] = sorted("%s-%s" % (r.name, r.sha256)
                                       for r in image_refs.parse_refs(text, "%s of %s at %s" % (path, repo, sha)).values())
                except (UnicodeDecodeError, image_refs.RefsFileError) as exc:
                    read[key] = exc
            if isinstance(read[key], Exception):
                problem = str(read[key]) if isinstance(read[key], image_refs.RefsFileError) else \
                    "%s of %s at %s is not UTF-8 text" % (path, repo, sha)
                if not ignore_invalid:
                    raise image_refs.RefsFileError(problem + " (ignore_invalid: true to prune anyway)")
                invalid.append(dict(head, problem=problem))
                continue
            head["refs"] = read[key]
            refs.update(read[key])
            heads.append(head)
    return sorted(refs), heads, invalid


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            repos=dict(type="list", elements="str"),
            refs_file=dict(type="str", default=image_refs.DEFAULT_REFS_FILE),
            ignore_invalid=dict(type="bool", default=False),
        ),
        families=("forge", "config"),
        supports_check_mode=True,
    )
    params, config = module.params, module.config
    if not params["repos"] and (config is None or not config.testmap):
        module.fail_json(msg="repos is required (or a config file whose testmap names the repositories)")
    result = dict(changed=False)
    with module.reporting(result):
        repos = params["repos"] or load_testmap(config.testmap).repos
        client = module.forge_client()
        result["requests"] = client.stats
        result["refs"], result["heads"], result["invalid"] = collect(
            client, repos, params["refs_file"].lstrip("/"), params["ignore_invalid"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
