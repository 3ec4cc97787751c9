#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: github_image_ref
short_description: Open or update the pull request that points a repository's tests at a VM image
version_added: 0.2.0
description:
  - A tested repository names the VM images its tests boot in a references file (by default
    C(.testfleet/images.yml), a YAML mapping C(name -> name-sha256); see C(docs/images.md)). This
    module makes a new image reach the tests only through a reviewed change of that file - it
    commits the new reference on a branch of the repository and opens a pull request into
    O(base), or updates the one already open from that branch.
  - Idempotent. When O(base) already references the image nothing is written
    (RV(up_to_date)). When the branch already holds the change and its pull request is open,
    only a changed title or body is written. A branch left from an earlier pull request that was
    merged or closed is reset to O(base) first.
  - Only the image's line of the file changes (comments and other entries stay); a file the
    module cannot edit that way (flow style, a multi-line entry) is a clear failure.
  - With O(config), the GitHub API URL and credentials come from testfleet's config file, so no
    secret passes through the play.
extends_documentation_fragment:
  - testfleet.infra.forge
  - ansible.builtin.action_common_attributes
options:
  repo:
    description:
      - The tested repository, C(owner/name).
    type: str
    required: true
  image:
    description:
      - The image to point the tests at, C(<name>-<sha256>) (what C(testfleet.infra.vm_image)
        builds and C(testfleet.infra.image_publish) stores).
    type: str
    required: true
  base:
    description:
      - The branch the pull request goes into. Default - the repository's default branch.
    type: str
  refs_file:
    description:
      - Path of the references file in the repository.
    type: str
    default: .testfleet/images.yml
  branch:
    description:
      - The branch that carries the change. Default - C(testfleet/image-<name>), one branch and
        one pull request per image name, so a newer build of the same image updates the pull
        request instead of opening another.
    type: str
  title:
    description:
      - The pull request's title. Default - C(Images - <name> <first 12 digits of the sha256>).
    type: str
  body:
    description:
      - The pull request's description. Default - the old and new references, and O(manifest)'s
        base, package count and build time when given.
    type: str
  manifest:
    description:
      - The image's manifest (the C(manifest) that C(testfleet.infra.vm_image) returns), for the
        default O(body).
    type: dict
  commit_message:
    description:
      - The commit message. Default - the title.
    type: str
  config:
    description:
      - testfleet's config file on the managed host; its C(forge) section gives the API URL and
        the token file (the ETag cache goes to C(forge-cache/) in its C(worker.work_dir)).
      - Mutually exclusive with O(token), O(token_file) and O(app_id).
    type: path
attributes:
  check_mode:
    support: full
    details: Reads the branches, the file and the pull requests and reports what would be written; writes nothing.
  diff_mode:
    support: full
    details: The references file before and after the change.
  platform:
    platforms: posix
notes:
  - The token needs C(contents:write) and C(pull_requests:write) on O(repo).
  - The pull request is opened by the token's user (or app), and the scanner treats it like any
    other - unless that author is on the test map's allow-list its contexts wait for an
    approval. The image refresh job (C(playbooks/jobs/image-refresh.yml)) then asks the scanner
    for a C(retest) of the contexts that boot the image, which approves them.
author:
  - testfleet developers (@testfleet)
"""

EXAMPLES = r"""
- name: Point the tests of example/project at the new Debian image
  testfleet.infra.github_image_ref:
    config: /etc/testfleet/config.yml
    repo: example/project
    image: "debian-12-{{ built.sha256 }}"
    manifest: "{{ built.manifest }}"
  register: pull

- name: Say which pull request carries it
  ansible.builtin.debug:
    msg: "{{ pull.pull.html_url | default('main already uses it') }}"
"""

RETURN = r"""
up_to_date:
  description: Whether O(base) already references the image (then nothing else is done).
  returned: success
  type: bool
  sample: false
pull:
  description: The open pull request carrying the change (in check mode, the one that would be
    updated; none when it would be opened, or when RV(up_to_date)).
  returned: when there is one
  type: dict
  sample: {number: 42, html_url: "https://github.com/example/project/pull/42", head_sha: 9f1c..., updated_at: "2026-11-26T10:00:00Z"}
created:
  description: Whether the pull request was (would be) opened by this task.
  returned: success
  type: bool
  sample: true
committed:
  description: Whether a commit with the new reference was (would be) made on RV(branch).
  returned: success
  type: bool
  sample: true
branch:
  description: The branch carrying the change.
  returned: success
  type: str
  sample: testfleet/image-debian-12
base:
  description: The branch the pull request goes into.
  returned: success
  type: str
  sample: main
previous:
  description: The reference O(base) has for the image's name (none when it has none).
  returned: success
  type: str
  sample: debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e
requests:
  description: GitHub requests made (C(requests), C(counted), C(not_modified), C(writes)).
  returned: always
  type: dict
  sample: {requests: 6, counted: 6, not_modified: 0, writes: 3}
"""

from ansible_collections.testfleet.infra.plugins.module_utils.images import refs as image_refs
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming


def _text(found, path):
    if found is None:
        return ""
    try:
        return found["content"].decode("utf-8")
    except UnicodeDecodeError:
        raise image_refs.RefsFileError("%s is not UTF-8 text" % path) from None


def _default_body(ref, previous, manifest):
    lines = ["This pull request points the tests at a new build of the VM image `%s`:" % ref.name, "",
             "- before: `%s`" % (previous or "(none)"), "- after: `%s-%s`" % (ref.name, ref.sha256)]
    if manifest:
        base = manifest.get("base")
        if isinstance(base, dict):
            base = " ".join("%s=%s" % (key, base[key]) for key in sorted(base) if not isinstance(base[key], (dict, list)))
        if base:
            lines.append("- base: %s" % base)
        if isinstance(manifest.get("packages"), list):
            lines.append("- packages: %d" % len(manifest["packages"]))
        if manifest.get("built_at"):
            lines.append("- built at: %s" % manifest["built_at"])
    lines += ["", "The image was built and booted by testfleet's image refresh job; the tests that boot it "
              "run on this pull request. Merging it is what makes every test use the new image."]
    return "\n".join(lines)


class ChangeError(ValueError):
    """The change asked for cannot be made (the message says why)."""


class ImageRefChange:
    """Works out and carries out the change (``check``: work it out only).

    Raises ChangeError, ImageNameError, RefsFileError and ForgeError; changes nothing else.
    """

    def __init__(self, client, params, check=False):
        self.client = client
        self.params = params
        self.check = check
        self.repo = params["repo"]
        self.path = params["refs_file"].lstrip("/")
        try:
            self.ref = image_naming.parse_image_ref(params["image"])
        except image_naming.ImageNameError as exc:
            raise ChangeError("image: %s" % exc) from None
        if self.ref.name is None:
            raise ChangeError("image must be <name>-<sha256> (the name says which entry of %s to change), not a "
                              "bare SHA-256" % self.path)
        self.branch = params["branch"] or "testfleet/image-%s" % self.ref.name
        self.result = {"changed": False, "created": False, "committed": False, "up_to_date": False,
                       "branch": self.branch}

    def run(self):
        params, check = self.params, self.check
        base = params["base"] or self.client.default_branch(self.repo)
        if base == self.branch:
            raise ChangeError("branch and base are both %s" % base)
        self.result["base"] = base
        base_sha = self.client.ref_sha(self.repo, base)
        if base_sha is None:
            raise ChangeError("%s has no branch %s" % (self.repo, base))
        base_text = _text(self.client.file(self.repo, self.path, base_sha), self.path)
        before = image_refs.parse_refs(base_text, "%s of %s" % (self.path, base))
        previous = before.get(self.ref.name)
        self.result["previous"] = "%s-%s" % (previous.name, previous.sha256) if previous else None
        if previous == self.ref:
            self.result["up_to_date"] = True
            return self.result
        wanted = image_refs.set_ref(base_text, self.ref, "%s of %s" % (self.path, base))
        title = params["title"] or "Images - %s %s" % (self.ref.name, self.ref.sha256[:12])
        body = params["body"] or _default_body(self.ref, self.result["previous"], params["manifest"])

        open_pulls = [p for p in self.client.pulls_from(self.repo, self.branch) if p["base_ref"] == base]
        pull = open_pulls[0] if open_pulls else None
        branch_sha = self.client.ref_sha(self.repo, self.branch)
        on_branch = None
        if branch_sha is not None and pull is not None:
            on_branch = self.client.file(self.repo, self.path, branch_sha)
        branch_text = _text(on_branch, self.path) if on_branch is not None else None
        needs_commit = branch_text is None or \
            image_refs.parse_refs(branch_text, "%s of %s" % (self.path, self.branch)).get(self.ref.name) != self.ref
        diff_before = branch_text if branch_text is not None else base_text
        if needs_commit:
            # an open pull request gets a commit on top; otherwise the branch starts again from base
            text = image_refs.set_ref(branch_text, self.ref, self.path) if branch_text is not None else wanted
            self.result["diff"] = {"before": diff_before, "after": text,
                                   "before_header": "%s (%s)" % (self.path, self.branch if pull else base),
                                   "after_header": "%s (%s)" % (self.path, self.branch)}
            self.result["committed"] = self.result["changed"] = True
            if not check:
                self._commit(text, on_branch, branch_sha, base_sha, pull, params["commit_message"] or title)
        if pull is None:
            self.result["created"] = self.result["changed"] = True
            if not check:
                pull = self.client.create_pull(self.repo, self.branch, base, title, body)
        elif pull["title"] != title or (pull["body"] or "") != body:
            self.result["changed"] = True
            if not check:
                pull = self.client.update_pull(self.repo, pull["number"], title=title, body=body)
        if pull is not None:
            if not check:
                pull = self.client.pull(self.repo, pull["number"])
            self.result["pull"] = dict((key, pull[key]) for key in ("number", "html_url", "head_sha", "title",
                                                                    "updated_at", "state"))
        return self.result

    def _commit(self, text, on_branch, branch_sha, base_sha, pull, message):
        if branch_sha is None:
            self.client.create_branch(self.repo, self.branch, base_sha)
        elif pull is None:
            # left from a merged or closed pull request: start again from base
            self.client.move_branch(self.repo, self.branch, base_sha, force=True)
        if on_branch is None:
            # the branch is now base: the file's blob is base's (or there is none)
            on_branch = self.client.file(self.repo, self.path, base_sha)
        self.client.put_file(self.repo, self.path, text.encode("utf-8"), message, self.branch,
                             blob_sha=on_branch["sha"] if on_branch else None)


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            repo=dict(type="str", required=True),
            image=dict(type="str", required=True),
            base=dict(type="str"),
            refs_file=dict(type="str", default=image_refs.DEFAULT_REFS_FILE),
            branch=dict(type="str"),
            title=dict(type="str"),
            body=dict(type="str"),
            manifest=dict(type="dict"),
            commit_message=dict(type="str"),
        ),
        families=("forge", "config"),
        supports_check_mode=True,
    )
    failed = {}
    with module.reporting(failed, errors=(ChangeError,)):
        client = module.forge_client()
        failed["requests"] = client.stats
        result = ImageRefChange(client, module.params, module.check_mode).run()
    if not module.diff:
        result.pop("diff", None)
    module.exit_json(requests=client.stats, **result)


if __name__ == "__main__":
    main()
