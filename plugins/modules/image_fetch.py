#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image_fetch
short_description: Get a verified VM image from the image store into a worker's local cache
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - Makes the image O(name) with the SHA-256 O(sha256) present in the cache directory
    O(cache_dir) and returns its path. The file there always has bytes that hash to O(sha256).
  - Under a lock per image (C(flock) on C(<cache_dir>/.state/<file>.lock)), so parallel jobs on
    one host download an image once; the others wait for the lock (up to O(lock_timeout)) and
    then find it cached.
  - A download goes to C(<cache_dir>/.state/<file>.part) and is hashed as it arrives. An
    interrupted download (a broken connection, a killed job) is resumed from the size of that
    file with a ranged read (S3 C(Range), an offset in a directory store), within the same task
    up to O(retries) times, and by the next fetch otherwise. The file gets its final name only
    when all its bytes hash to O(sha256); bytes that do not match are thrown away (a resumed
    download is tried once more from scratch first) and the task fails.
  - A cached image is trusted without hashing it again while its size, mtime, ctime, inode and
    device match the sidecar written after its last full hash (C(.state/<file>.verified)); any
    write, truncation, replacement, C(touch) or C(chmod) changes the ctime, so the file is
    hashed again, and removed and fetched again if it no longer matches. O(verify=full) hashes on
    every fetch (it also catches corruption below the filesystem).
  - The image must be published (its manifest in the store). The manifest is cached next to the
    image and returned. A cached image is served without contacting the store.
  - Progress of long downloads and hashes goes to O(progress_log) (a module cannot show output
    while it runs); the start and end of a download also go to the host's log (syslog/journal).
  - Cached images are read-only (mode 0444); boot a VM on a qcow2 overlay that has the cached
    image as its backing file.
extends_documentation_fragment:
  - testfleet.infra.image_store
  - testfleet.infra.progress
  - ansible.builtin.action_common_attributes
options:
  store_url:
    description:
      - The image store, C(s3://bucket/prefix), C(file:///dir) or an absolute path.
    type: str
    required: true
  name:
    description:
      - The image's name, as in C(<name>-<sha256>.qcow2).
    type: str
    required: true
  sha256:
    description:
      - The SHA-256 of the image's bytes (64 lowercase hex digits).
    type: str
    required: true
  cache_dir:
    description:
      - The cache directory on the managed host (created when missing). Jobs of one host share it.
    type: path
    default: /var/cache/testfleet/images
  verify:
    description:
      - How a cached image is checked. V(sidecar) hashes it only when it changed since its last
        full hash; V(full) hashes it every time.
    type: str
    choices: [sidecar, full]
    default: sidecar
  lock_timeout:
    description:
      - Seconds to wait for another fetch (or prune) of the same image to finish.
    type: float
    default: 3600.0
  retries:
    description:
      - How often an interrupted download is resumed within this task before it fails (the
        partial file stays for the next fetch).
    type: int
    default: 3
  progress_log:
    description:
      - File that gets a line every O(progress_interval) seconds of a download or hash (phase,
        bytes, percentage, rate, time left). Defaults to C(<cache_dir>/fetch.log).
    type: path
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Checks the cached copy (hashing it when the sidecar does not vouch for it) and that
      the store has the image; downloads, locks and writes nothing.
  diff_mode:
    support: full
    details: The cached file's state (C(absent), C(corrupt), C(present)) before and after.
seealso:
  - module: testfleet.infra.image_publish
  - module: testfleet.infra.image_prune
"""

EXAMPLES = r"""
- name: Get the test image into the worker's cache
  testfleet.infra.image_fetch:
    name: debian-12
    sha256: 0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e
    store_url: s3://ci-images/images
    endpoint_url: https://s3.example.org
    access_key: testfleet-worker
    secret_key_file: /etc/testfleet/s3-secret
  register: image

- name: Boot a throwaway overlay of it
  ansible.builtin.command:
    cmd: qemu-img create -f qcow2 -F qcow2 -b {{ image.path }} {{ job_dir }}/disk.qcow2
  changed_when: true
"""

RETURN = r"""
path:
  description: The verified image in the cache.
  returned: success
  type: str
  sample: /var/cache/testfleet/images/debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e.qcow2
manifest_path:
  description: Its manifest in the cache.
  returned: success
  type: str
  sample: /var/cache/testfleet/images/debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e.manifest.json
manifest:
  description: The image's manifest.
  returned: success
  type: dict
  sample: {name: debian-12, sha256: 0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e, size: 1073741824}
size:
  description: The image's size in bytes.
  returned: success
  type: int
  sample: 1073741824
downloaded_bytes:
  description: Bytes read from the store by this task (0 for a cached image).
  returned: success
  type: int
  sample: 536870912
resumed_from:
  description: Bytes of an earlier, interrupted download that were kept (0 when none).
  returned: success
  type: int
  sample: 536870912
verified:
  description: How the returned file was verified. C(sidecar) unchanged since its last full hash,
    C(hash) hashed by this task, C(download) hashed as it was downloaded.
  returned: success
  type: str
  sample: download
replaced_corrupt:
  description: Whether a cached copy that no longer matched its SHA-256 was removed (and, unless
    in check mode, fetched again).
  returned: success
  type: bool
  sample: false
lock_wait:
  description: Seconds spent waiting for the image's lock (another fetch of it was running).
  returned: success
  type: float
  sample: 0.0
duration:
  description: Seconds the task took.
  returned: success
  type: float
  sample: 31.2
"""

import os

from ansible_collections.testfleet.infra.plugins.module_utils.images.cache import ImageCache
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            store_url=dict(type="str", required=True),
            name=dict(type="str", required=True),
            sha256=dict(type="str", required=True),
            cache_dir=dict(type="path", default="/var/cache/testfleet/images"),
            verify=dict(type="str", choices=["sidecar", "full"], default="sidecar"),
            lock_timeout=dict(type="float", default=3600.0),
            retries=dict(type="int", default=3),
        ),
        families=("image_store", "progress"),
        supports_check_mode=True,
    )
    params = module.params
    with module.reporting():
        ref = image_naming.ImageRef(image_naming.check_name(params["name"]), image_naming.check_sha256(params["sha256"].lower()))
        store = module.image_store()
    cache = ImageCache(params["cache_dir"])
    progress = module.progress_log(ref.image_file, default=None if module.check_mode else cache.progress_log_path())
    before = "present" if os.path.exists(cache.image_path(ref)) else "absent"
    with module.reporting(dict(name=ref.name, sha256=ref.sha256, path=cache.image_path(ref))):
        outcome = cache.fetch(store, ref, verify=params["verify"], lock_timeout=params["lock_timeout"],
                              retries=max(0, params["retries"]), progress=progress, check_mode=module.check_mode)
    if outcome["replaced_corrupt"]:
        before = "corrupt"
    duration = module.elapsed()
    if outcome["downloaded_bytes"]:
        message = "image_fetch: %s from %s: %d bytes in %.1f s (resumed from %d)" % (
            ref.image_file, store.describe(), outcome["downloaded_bytes"], duration, outcome["resumed_from"])
        module.log(message)
        progress.note("done: %d bytes downloaded in %.1f s, verified" % (outcome["downloaded_bytes"], duration))
    if outcome["replaced_corrupt"]:
        module.warn("the cached %s did not match its SHA-256 and was %s" % (
            ref.image_file, "going to be replaced" if module.check_mode else "replaced"))
    module.exit_json(
        changed=outcome["changed"], name=ref.name, sha256=ref.sha256, path=outcome["path"],
        manifest_path=outcome["manifest_path"], manifest=outcome["manifest"], size=outcome["size"],
        downloaded_bytes=outcome["downloaded_bytes"], resumed_from=outcome["resumed_from"],
        verified=outcome["verified"], replaced_corrupt=outcome["replaced_corrupt"], lock_wait=outcome["lock_wait"],
        duration=duration,
        diff={"before": {"path": outcome["path"], "state": before},
              "after": {"path": outcome["path"], "state": "present", "sha256": ref.sha256}})


if __name__ == "__main__":
    main()
