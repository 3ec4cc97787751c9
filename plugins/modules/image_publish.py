#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image_publish
short_description: Put a VM image and its manifest in the image store, once, verified
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - Uploads a content-addressed VM image (C(<name>-<sha256>.qcow2), as M(testfleet.infra.vm_image)
    builds it) and its manifest (C(<name>-<sha256>.manifest.json)) to the image store, an S3
    bucket or a directory.
  - Uploads only what the store lacks. The image counts as present when the stored qcow2 has the
    right size and, in S3, the right C(sha256) object metadata, and the stored manifest is valid
    and describes these bytes; then nothing is sent and the task reports no change. A stored
    manifest is kept as it is (the first publication of these bytes wins).
  - The bytes are hashed while they are sent; an upload whose bytes do not hash to the SHA-256 in
    the file name (a corrupt or changing file) is abandoned before anything appears under the
    final name. In S3 a small image is one PutObject, a larger one a multipart upload that is
    completed only after that check (aborted otherwise); an object only becomes visible when
    its upload completes, so there is never a half-uploaded image under its name. A directory
    store gets a copy in its C(.incoming/) folder, renamed into place after the check.
  - The manifest is written after the qcow2 (and removed first when a broken qcow2 is
    replaced), so a store never has a manifest that describes other bytes. After the upload,
    the stored size, SHA-256 metadata and manifest are read back and checked.
extends_documentation_fragment:
  - testfleet.infra.image_store
  - testfleet.infra.progress
  - ansible.builtin.action_common_attributes
options:
  store_url:
    description:
      - The image store, C(s3://bucket/prefix) (the bucket must exist), C(file:///dir) or an
        absolute path (created when missing).
    type: str
    required: true
  image:
    description:
      - The qcow2 file on the managed host, named C(<name>-<sha256>.qcow2) (the SHA-256 of its
        bytes).
    type: path
    required: true
  manifest:
    description:
      - The manifest file. Defaults to C(<name>-<sha256>.manifest.json) next to O(image).
      - It must be a JSON object with at least C(name), C(sha256), C(size), C(recipe_sha256),
        C(base), C(packages) and C(built_at), describing O(image).
    type: path
  part_size_mib:
    description:
      - S3 only. Images larger than this are sent as a multipart upload in parts of this many
        MiB (at least 5; doubled as needed to stay within 10000 parts).
    type: int
    default: 16
  concurrency:
    description:
      - S3 only. Parts sent at the same time. Memory use is about O(concurrency) times
        O(part_size_mib).
    type: int
    default: 4
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Reads the store and reports what would be uploaded; sends nothing.
  diff_mode:
    support: full
    details: The image and manifest as the store holds them before and after.
seealso:
  - module: testfleet.infra.image_fetch
  - module: testfleet.infra.image_prune
  - module: testfleet.infra.vm_image
"""

EXAMPLES = r"""
- name: Publish a freshly built image to the S3 image store
  testfleet.infra.image_publish:
    image: "{{ build.path }}"
    store_url: s3://ci-images/images
    endpoint_url: https://s3.example.org
    access_key: testfleet-builder
    secret_key_file: /etc/testfleet/s3-secret
    progress_log: /var/log/testfleet/image-publish.log

- name: Publish to a directory served by a web server
  testfleet.infra.image_publish:
    image: /var/lib/testfleet/build/debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e.qcow2
    store_url: file:///srv/testfleet/images
"""

RETURN = r"""
name:
  description: The image's name.
  returned: success
  type: str
  sample: debian-12
sha256:
  description: The SHA-256 of the image's bytes.
  returned: success
  type: str
  sample: 0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e
size:
  description: The image's size in bytes.
  returned: success
  type: int
  sample: 1073741824
location:
  description: Where the qcow2 is in the store.
  returned: success
  type: str
  sample: s3://ci-images/images/debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e.qcow2
manifest_location:
  description: Where the manifest is in the store.
  returned: success
  type: str
  sample: s3://ci-images/images/debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e.manifest.json
uploaded:
  description: What was (in check mode, would be) sent, C(image) and/or C(manifest); empty when
    the store had both.
  returned: success
  type: list
  elements: str
  sample: [image, manifest]
manifest:
  description: The manifest the store holds (in check mode, the one it would hold).
  returned: success
  type: dict
  sample: {name: debian-12, sha256: 0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e, size: 1073741824}
duration:
  description: Seconds the task took.
  returned: success
  type: float
  sample: 12.5
"""

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming


def describe(stored, ref):
    """The diff side of what a store holds of ``ref``."""
    image = stored["image"]
    return {
        "image": None if image is None else {"file": ref.image_file, "size": image.size, "sha256": image.sha256},
        "manifest": stored["manifest"],
    }


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            store_url=dict(type="str", required=True),
            image=dict(type="path", required=True),
            manifest=dict(type="path"),
            part_size_mib=dict(type="int", default=16),
            concurrency=dict(type="int", default=4),
        ),
        families=("image_store", "progress"),
        supports_check_mode=True,
    )
    params = module.params
    if params["part_size_mib"] < 5:
        module.fail_json(msg="part_size_mib must be at least 5 (S3's smallest part)")
    if params["concurrency"] < 1:
        module.fail_json(msg="concurrency must be at least 1")
    try:
        ref = image_naming.parse_image_file_name(params["image"].rstrip("/").rsplit("/", 1)[-1])
    except image_naming.ImageNameError as exc:
        module.fail_json(msg="image: %s" % exc)
    manifest = None
    with module.reporting():
        if params["manifest"]:
            manifest = image_naming.parse_manifest(files.read_file(params["manifest"], "manifest"), ref,
                                                   source=params["manifest"])
        store = module.image_store(part_size=params["part_size_mib"] * images.MIB, concurrency=params["concurrency"])
    progress = None
    if params["progress_log"]:
        log = module.progress_log("publish %s to %s" % (ref.image_file, store.describe()))

        def progress(done, total):
            log("uploading", done, total)
    with module.reporting(dict(name=ref.name, sha256=ref.sha256)):
        outcome = images.publish_image(store, params["image"], manifest=manifest, check_mode=module.check_mode,
                                       progress=progress)
    if outcome["changed"] and not module.check_mode:
        module.log("image_publish: %s -> %s (%s)" % (ref.image_file, store.describe(), ", ".join(outcome["uploaded"])))
    before = describe(outcome["before"], ref)
    if module.check_mode or not outcome["changed"]:
        after = before if not outcome["changed"] else {
            "image": {"file": ref.image_file, "size": outcome["size"],
                      "sha256": ref.sha256 if store.kind == "s3" else None},
            "manifest": outcome["manifest"]}
    else:
        after = describe(outcome["after"], ref)
    module.exit_json(
        changed=outcome["changed"], name=ref.name, sha256=ref.sha256, size=outcome["size"],
        location=store.location(ref.image_file), manifest_location=store.location(ref.manifest_file),
        uploaded=outcome["uploaded"], manifest=outcome["manifest"], duration=module.elapsed(),
        diff={"before": before, "after": after})


if __name__ == "__main__":
    main()
