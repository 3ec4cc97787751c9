#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_image
short_description: Build a bootable qcow2 test VM image from a recipe, content-addressed and boot-checked
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - Builds a qcow2 VM image from a recipe (YAML) made of a base (debootstrap for Debian and Ubuntu,
    or a cloud image URL with its SHA-256), packages, files, a setup script and a test user reached
    over SSH. The recipe format is documented in C(docs/images.md) (heading "Building images").
  - The result is C(<name>-<sha256>.qcow2) in O(output_dir), where C(<sha256>) is the SHA-256
    of the qcow2 file, plus C(<name>-<sha256>.manifest.json) (name, sha256, size,
    recipe_sha256, base, packages with versions, how to boot it, the boot check).
  - Content-addressed by recipe. When O(output_dir) already holds an image whose manifest has
    the recipe's canonical hash (C(recipe_sha256)), nothing is built and C(changed) is false.
    That check reads manifests only (no image is hashed) and takes well under a second.
  - A built image is booted (a throwaway overlay, KVM when a probe shows it works, else TCG)
    and must answer over SSH as the test user (and pass the recipe's C(check) command) before
    it gets its final name; the manifest is written last.
  - O(accel), O(memory), O(cpus) and O(qemu) are those of the boot check (and of the VM that
    runs cloud-init on a cloud image, which gets at least 2048 MiB).
  - Debootstrap images need root (debootstrap, chroot, mount) and the Debian packages
    debootstrap, e2fsprogs, qemu-utils, qemu-system-x86 and openssh-client. A debootstrapped
    base is kept in O(cache_dir) per suite and package set, so another build that only changes
    files or the setup script skips debootstrap.
  - Progress (one line per step, with durations) is appended to O(progress_log) while the
    module runs (C(tail -f) it), and sent to the module's log (syslog/journal); the full output
    of the build's commands goes to O(output_log).
extends_documentation_fragment:
  - testfleet.infra.vm
  - ansible.builtin.action_common_attributes
options:
  recipe:
    description:
      - The recipe, as a mapping. Relative C(src) paths of files are not allowed here (use
        O(recipe_file)).
      - Exactly one of O(recipe) and O(recipe_file) is required.
    type: dict
  recipe_file:
    description:
      - A recipe file (YAML). Relative C(src) paths of its files are relative to its directory.
    type: path
  output_dir:
    description:
      - Where the image and its manifest are written (created if needed).
    type: path
    required: true
  cache_dir:
    description:
      - Where debootstrapped bases (tarballs, about 800 MB each) and downloaded cloud images are kept,
        and the result of the KVM probe (C(kvm-probe.json)).
    type: path
    default: /var/cache/testfleet/vm-build
  work_dir:
    description:
      - Where the root file system and the raw disk are made while building (needs a few GB;
        removed afterwards).
    type: path
    default: /var/tmp
  progress_log:
    description:
      - The file progress lines are appended to. Default C(<output_dir>/logs/<name>.progress.log).
    type: path
  output_log:
    description:
      - The file the build's commands write their output to (debootstrap, the setup script...).
        Default C(<output_dir>/logs/<name>.output.log).
    type: path
  boot_timeout:
    description:
      - Seconds the boot check waits for the image to answer over SSH.
    type: int
    default: 600
  refresh_base:
    description:
      - Run debootstrap even when a base of the same suite and packages is cached (to get newer
        packages into a build; the recipe hash does not change, so this only matters when a build
        happens).
    type: bool
    default: false
  rebuild:
    description:
      - Build even when an image of this recipe is in O(output_dir) (implies O(refresh_base)),
        the same recipe with the packages of today. The image refresh job does this; the result
        is a new image (new SHA-256) whenever a package changed.
    type: bool
    default: false
  base_cache_keep:
    description:
      - How many debootstrapped bases O(cache_dir) keeps (the least recently used go).
    type: int
    default: 3
  setup_timeout:
    description:
      - Seconds the setup script (or, for cloud images, the whole cloud-init run) may take.
    type: int
    default: 3600
  lock_timeout:
    description:
      - Seconds to wait for another build of the same image name in O(output_dir) to finish.
    type: int
    default: 7200
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Reports whether a build is needed (C(changed)) and the recipe's hash; builds nothing.
  diff_mode:
    support: full
    details: The image file (none before a build) and the recipe hash.
seealso:
  - module: testfleet.infra.vm_instance
  - module: testfleet.infra.image_publish
"""

EXAMPLES = r"""
- name: Build the Debian 12 test image
  testfleet.infra.vm_image:
    recipe_file: images/debian-12.yml
    output_dir: /var/lib/testfleet/images
  register: image

- name: A minimal image, recipe inline
  testfleet.infra.vm_image:
    output_dir: /var/lib/testfleet/images
    recipe:
      name: debian-12-minimal
      base:
        debootstrap:
          suite: bookworm
      packages: [python3]
      user:
        name: tester
        ssh_authorized_keys:
          - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJb8... alice@example.org
      check: python3 --version

- name: Fedora from its cloud image
  testfleet.infra.vm_image:
    output_dir: /var/lib/testfleet/images
    recipe:
      name: fedora-41
      base:
        cloud_image:
          url: https://download.fedoraproject.org/pub/fedora/linux/releases/41/Cloud/x86_64/images/Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2
          sha256: "{{ fedora_41_sha256 }}"   # from Fedora's CHECKSUM file, checked after the download
      packages: [python3, gcc]
"""

RETURN = r"""
changed:
  description: Whether an image was built (in check mode, whether one would be).
  returned: always
  type: bool
build_needed:
  description: Whether no image of this recipe was found in O(output_dir).
  returned: always
  type: bool
name:
  description: The image's name (the recipe's C(name)).
  returned: always
  type: str
  sample: debian-12-minimal
recipe_sha256:
  description: The canonical hash of the recipe (what decides whether a build is needed).
  returned: always
  type: str
path:
  description: The image file. Not returned in check mode when a build is needed.
  returned: when an image exists or was built
  type: str
  sample: /var/lib/testfleet/images/debian-12-minimal-3c2f...e1.qcow2
manifest_path:
  description: The manifest file next to the image.
  returned: when an image exists or was built
  type: str
sha256:
  description: The SHA-256 of the qcow2 file (also in its name).
  returned: when an image exists or was built
  type: str
manifest:
  description:
    - The image's manifest. Besides C(name), C(sha256), C(size), C(recipe_sha256), C(base),
      C(packages) (C(name=version) of every installed package for debootstrap images) and
      C(built_at), it has C(boot) (C(mode) kernel or disk; the kernel, initrd and command line
      inside the image), C(user) (the test user), C(boot_check) (acceleration, seconds to SSH,
      kernel release), C(recipe_packages), C(recipe) and C(build_seconds).
  returned: when an image exists or was built
  type: dict
timings:
  description: Seconds per build step (debootstrap or base, configure, setup, mke2fs, qcow2, boot-check, hash).
  returned: when an image was built
  type: dict
  sample: {base: 3.1, configure: 2.0, mke2fs: 4.2, qcow2: 4.6, boot-check: 31.0, hash: 0.6}
progress_log:
  description: The file progress lines were appended to.
  returned: always
  type: str
"""

import os
import time
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.testfleet.infra.plugins.module_utils.vm import build as vm_build
from ansible_collections.testfleet.infra.plugins.module_utils.vm import steps as vm_steps
from ansible_collections.testfleet.infra.plugins.module_utils.vm import recipe as vm_recipe
from ansible_collections.testfleet.infra.plugins.module_utils.images.cache import ProgressLog
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule

TOOLS = ("qemu-img", "mke2fs", "ssh", "ssh-keygen")


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            recipe=dict(type="dict"),
            recipe_file=dict(type="path"),
            output_dir=dict(type="path", required=True),
            cache_dir=dict(type="path", default="/var/cache/testfleet/vm-build"),
            work_dir=dict(type="path", default="/var/tmp"),
            progress_log=dict(type="path"),
            output_log=dict(type="path"),
            boot_timeout=dict(type="int", default=600),
            refresh_base=dict(type="bool", default=False),
            rebuild=dict(type="bool", default=False),
            base_cache_keep=dict(type="int", default=3),
            setup_timeout=dict(type="int", default=3600),
            lock_timeout=dict(type="int", default=7200),
        ),
        families=("vm",),
        mutually_exclusive=[("recipe", "recipe_file")],
        required_one_of=[("recipe", "recipe_file")],
        supports_check_mode=True,
    )
    params = module.params
    if params["recipe_file"] and not vm_recipe.HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    try:
        if params["recipe_file"]:
            recipe = vm_recipe.load_recipe(params["recipe_file"])
        else:
            recipe = vm_recipe.parse_recipe(params["recipe"], source="recipe")
    except vm_recipe.RecipeError as exc:
        module.fail_json(msg=str(exc))

    output_dir = params["output_dir"]
    logs = os.path.join(output_dir, "logs")
    progress_path = params["progress_log"] or os.path.join(logs, "%s.progress.log" % recipe.name)
    result = dict(changed=False, build_needed=False, name=recipe.name, recipe_sha256=recipe.sha256,
                  progress_log=progress_path)

    found = None if params["rebuild"] else vm_build.find_built(output_dir, recipe)
    if found is not None:
        path, manifest = found
        result.update(path=path, manifest_path=path[:-len(".qcow2")] + ".manifest.json", sha256=manifest["sha256"],
                      manifest=manifest)
        module.exit_json(**result)

    result.update(changed=True, build_needed=True,
                  diff={"before": {"image": None, "recipe_sha256": recipe.sha256},
                        "after": {"image": "%s-<sha256>.qcow2" % recipe.name, "recipe_sha256": recipe.sha256}})
    if module.check_mode:
        module.exit_json(**result)

    if os.geteuid() != 0 and recipe.base_kind == "debootstrap":
        module.fail_json(msg="building a debootstrap image needs root (debootstrap, chroot and mount): run the task "
                             "with become: true", **result)
    missing = [tool for tool in TOOLS + (("debootstrap",) if recipe.base_kind == "debootstrap" else ())
               + (params["qemu"],) if module.get_bin_path(tool) is None]
    if missing:
        module.fail_json(msg="missing programs: %s (Debian packages qemu-system-x86, qemu-utils, e2fsprogs, "
                             "openssh-client, debootstrap)" % ", ".join(missing), **result)

    try:
        os.makedirs(logs, exist_ok=True)
        os.makedirs(params["cache_dir"], exist_ok=True)
    except OSError as exc:
        module.fail_json(msg="cannot create %s: %s" % (exc.filename, exc.strerror), **result)
    output_path = params["output_log"] or os.path.join(logs, "%s.output.log" % recipe.name)
    progress = ProgressLog(progress_path, recipe.name)
    steps = vm_steps.Steps(progress, output_path, log=module.log)
    began = time.monotonic()
    try:
        with vm_steps.locked(os.path.join(output_dir, ".%s.lock" % recipe.name), timeout=params["lock_timeout"],
                             what="the build of %s" % recipe.name):
            # another build of the same recipe may have finished while this one waited
            found = None if params["rebuild"] else vm_build.find_built(output_dir, recipe)
            if found is not None:
                path, manifest = found
                result.update(changed=False, path=path, manifest_path=path[:-len(".qcow2")] + ".manifest.json",
                              sha256=manifest["sha256"], manifest=manifest)
                result.pop("diff", None)
                module.exit_json(**result)
            with open(output_path, "wb"):
                pass  # this build's output only
            steps.note("building %s (recipe %s)" % (recipe.name, recipe.sha256[:12]))
            path, manifest = vm_build.build_image(
                recipe, output_dir, params["cache_dir"], params["work_dir"], steps, boot_timeout=params["boot_timeout"],
                refresh_base=params["refresh_base"] or params["rebuild"], base_cache_keep=params["base_cache_keep"],
                setup_timeout=params["setup_timeout"], **module.vm_settings(params["cache_dir"]))
    except (vm_steps.BuildError, vm_recipe.RecipeError) as exc:
        steps.note("build failed: %s" % exc)
        module.fail_json(msg="building %s failed: %s" % (recipe.name, exc), output_log=output_path,
                         timings=steps.timings, **result)
    except OSError as exc:
        steps.note("build failed: %s" % exc)
        module.fail_json(msg="building %s failed: %s" % (recipe.name, exc), output_log=output_path,
                         timings=steps.timings, exception=traceback.format_exc(), **result)
    steps.note("built %s in %.0f s" % (os.path.basename(path), time.monotonic() - began))
    result["diff"]["after"]["image"] = os.path.basename(path)
    result.update(path=path, manifest_path=path[:-len(".qcow2")] + ".manifest.json", sha256=manifest["sha256"],
                  manifest=manifest, timings=steps.timings)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
