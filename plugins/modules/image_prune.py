#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: image_prune
short_description: Remove VM images that nothing references from the image store and a cache
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - Removes every image (qcow2 and manifest) of the image store O(store_url) and of the cache
    directory O(cache_dir) that is not in O(keep) and is older than O(older_than_days).
  - O(keep) is what branches and open pull requests reference; a playbook collects it from
    GitHub (e.g. the image references of each branch and open pull request of the tested
    repositories) and passes it whole. Files whose names are not image names are never touched.
  - Age in the store is the time the qcow2 was stored (its publication, not its build), so an
    image published for a pull request that is not opened yet survives the prune. Age in a
    cache is the time the image was last fetched (the sidecar's C(used_at)), else the files'
    modification time.
  - In the store the manifest goes first (the image is unpublished), then the qcow2. In a cache,
    an image is removed under its lock; an image whose lock is held (a fetch running) is kept.
    Interrupted downloads (C(.state/*.part)) of unreferenced images older than O(older_than_days)
    go too, and leftovers of interrupted uploads in a directory store's C(.incoming/) older than
    O(older_than_days) (at least a day).
  - Incomplete S3 multipart uploads are not listed here; give the bucket a lifecycle rule
    C(AbortIncompleteMultipartUpload).
extends_documentation_fragment:
  - testfleet.infra.image_store
  - ansible.builtin.action_common_attributes
options:
  cache_dir:
    description:
      - A worker's image cache directory (the O(testfleet.infra.image_fetch#module:cache_dir)
        of M(testfleet.infra.image_fetch)). At least one of O(store_url) and O(cache_dir) is
        required.
    type: path
  keep:
    description:
      - The images to keep, each an image reference C(<name>-<sha256>) (also with C(.qcow2)) or
        a bare C(<sha256>), which keeps every image with those bytes. An entry that is neither
        fails the task, so a typo never turns into a removal.
      - An empty list fails the task unless O(allow_empty_keep=true) (a broken query for the
        references must not empty the store).
    type: list
    elements: str
    required: true
  older_than_days:
    description:
      - Only images older than this many days go (see the description for what age means).
        V(0) removes every image that is not kept.
    type: float
    default: 30
  allow_empty_keep:
    description:
      - Allow an empty O(keep) (then every image older than O(older_than_days) goes).
    type: bool
    default: false
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Lists what would be removed (C(store_removed), C(cache_removed)); removes nothing.
  diff_mode:
    support: full
    details: The images of the store and of the cache before and after.
seealso:
  - module: testfleet.infra.image_publish
  - module: testfleet.infra.image_fetch
"""

EXAMPLES = r"""
- name: See what a prune of the store would remove
  testfleet.infra.image_prune:
    store_url: s3://ci-images/images
    endpoint_url: https://s3.example.org
    keep: "{{ referenced_images }}"
    older_than_days: 14
  check_mode: true
  register: would_go

- name: Prune a worker's cache
  testfleet.infra.image_prune:
    cache_dir: /var/cache/testfleet/images
    keep:
      - debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e
      - 4be5a8f3d1c2b0a9e8f7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5
    older_than_days: 7
"""

RETURN = r"""
store_removed:
  description: The images removed from the store (in check mode, that would be), with their
    files, size in bytes and age in days.
  returned: when O(store_url) is set
  type: list
  elements: dict
  sample: [{image: debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e, files: 2, size: 1073742000, age_days: 41.2}]
store_kept:
  description: The images that stay in the store, each with the reason (C(referenced) or C(recent)).
  returned: when O(store_url) is set
  type: list
  elements: dict
  sample: [{image: debian-12-4be5a8f3d1c2b0a9e8f7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5, reason: referenced, age_days: 3.5}]
store_incoming_removed:
  description: Leftovers of interrupted uploads removed from a directory store's C(.incoming/).
  returned: when O(store_url) is a directory
  type: list
  elements: str
  sample: []
cache_removed:
  description: The images removed from the cache (in check mode, that would be), as for
    RV(store_removed), the age being the time since the last fetch.
  returned: when O(cache_dir) is set
  type: list
  elements: dict
  sample: []
cache_kept:
  description: The images that stay in the cache, with the reason (C(referenced), C(recent) or C(in use)).
  returned: when O(cache_dir) is set
  type: list
  elements: dict
  sample: []
cache_partials_removed:
  description: Interrupted downloads removed from the cache.
  returned: when O(cache_dir) is set
  type: list
  elements: str
  sample: []
freed_bytes:
  description: Bytes removed (in check mode, that would be).
  returned: success
  type: int
  sample: 2147484000
"""

import os
import time

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images.cache import CacheBusy, ImageCache
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

DAY = 86400.0


class Keep:
    """The kept references: exact ``name-sha256`` pairs and bare SHA-256s."""

    def __init__(self, entries):
        self.refs = set()
        self.hashes = set()
        for entry in entries:
            ref = image_naming.parse_image_ref(entry)
            if ref.name is None:
                self.hashes.add(ref.sha256)
            else:
                self.refs.add(ref)

    def __contains__(self, ref):
        return ref.sha256 in self.hashes or ref in self.refs


def age_days(now, moment):
    return round(max(0.0, now - moment) / DAY, 2) if moment else None


def plan_store(store, keep, cutoff, now):
    removed, kept = [], []
    for ref, entry in sorted(store.list_images().items()):
        infos = [info for info in (entry["image"], entry["manifest"]) if info is not None]
        moment = (entry["image"] or entry["manifest"]).modified
        item = {"image": str(ref), "files": len(infos), "size": sum(info.size for info in infos),
                "age_days": age_days(now, moment)}
        if ref in keep:
            kept.append(dict(item, reason="referenced"))
        elif moment is not None and moment > cutoff:
            kept.append(dict(item, reason="recent"))
        else:
            removed.append((ref, item))
    return removed, kept


def prune_store(module, keep, cutoff, now, result):
    store = module.image_store()
    removed, kept = plan_store(store, keep, cutoff, now)
    for ref, dummy in removed:
        if not module.check_mode:
            store.delete_image(ref)
    result["store_removed"] = [item for dummy, item in removed]
    result["store_kept"] = kept
    result["freed_bytes"] += sum(item["size"] for dummy, item in removed)
    if isinstance(store, images.DirectoryStore):
        stale = store.stale_incoming(min(cutoff, now - DAY))
        for file_name, size in stale:
            if not module.check_mode:
                store.delete_incoming(file_name)
            result["freed_bytes"] += size
        result["store_incoming_removed"] = sorted(file_name for file_name, dummy in stale)
    result["diff"]["before"]["store"] = sorted([item["image"] for dummy, item in removed]
                                               + [item["image"] for item in kept])
    result["diff"]["after"]["store"] = sorted(item["image"] for item in kept)


def prune_cache(module, keep, cutoff, now, result):
    cache = ImageCache(module.params["cache_dir"])
    removed, kept = [], []
    for ref, entry in sorted(cache.entries().items()):
        item = {"image": str(ref), "files": len(entry["files"]), "size": entry["size"],
                "age_days": age_days(now, entry["last_used"])}
        if ref in keep:
            kept.append(dict(item, reason="referenced"))
        elif entry["last_used"] > cutoff:
            kept.append(dict(item, reason="recent"))
        elif module.check_mode:
            removed.append(item)
        else:
            try:
                with cache.lock(ref, timeout=0):
                    cache.remove(ref, lock_file=True)
                removed.append(item)
            except CacheBusy:
                kept.append(dict(item, reason="in use"))
    partials = []
    gone = set(item["image"] for item in removed)
    for ref, (path, size, modified) in sorted(cache.partials().items()):
        if ref in keep or modified > cutoff or str(ref) in gone:
            continue
        if not module.check_mode:
            try:
                with cache.lock(ref, timeout=0):
                    os.unlink(path)
            except CacheBusy:
                continue
            except OSError:
                continue
        partials.append(path)
        result["freed_bytes"] += size
    result["cache_removed"] = removed
    result["cache_kept"] = kept
    result["cache_partials_removed"] = partials
    result["freed_bytes"] += sum(item["size"] for item in removed)
    result["diff"]["before"]["cache"] = sorted([item["image"] for item in removed] + [item["image"] for item in kept])
    result["diff"]["after"]["cache"] = sorted(item["image"] for item in kept)


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            cache_dir=dict(type="path"),
            keep=dict(type="list", elements="str", required=True),
            older_than_days=dict(type="float", default=30),
            allow_empty_keep=dict(type="bool", default=False),
        ),
        required_one_of=[("store_url", "cache_dir")],
        families=("image_store",),
        supports_check_mode=True,
    )
    params = module.params
    if params["older_than_days"] < 0:
        module.fail_json(msg="older_than_days must not be negative")
    if not params["keep"] and not params["allow_empty_keep"]:
        module.fail_json(msg="keep is empty: refusing to prune every image (set allow_empty_keep: true if that is meant)")
    try:
        keep = Keep(params["keep"])
    except image_naming.ImageNameError as exc:
        module.fail_json(msg="keep: %s" % exc)
    now = time.time()
    cutoff = now - params["older_than_days"] * DAY
    result = {"changed": False, "freed_bytes": 0, "diff": {"before": {}, "after": {}}}
    with module.reporting(result):
        if params["store_url"]:
            prune_store(module, keep, cutoff, now, result)
        if params["cache_dir"]:
            if not os.path.isdir(params["cache_dir"]):
                result.update(cache_removed=[], cache_kept=[], cache_partials_removed=[])
            else:
                prune_cache(module, keep, cutoff, now, result)
    result["changed"] = bool(result.get("store_removed") or result.get("store_incoming_removed")
                             or result.get("cache_removed") or result.get("cache_partials_removed"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
