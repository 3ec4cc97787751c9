# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building VM test images from a recipe: what is already built, the boot check, the whole build.

The recipe is ``vm/recipe.py``; the steps are in ``vm/rootfs.py`` (debootstrap),
``vm/cloud_image.py`` (cloud images) and ``vm/steps.py`` (progress, lock, errors).

The build (:func:`build_image`): a root file system (debootstrap, unpacked from a cached tarball
of the same suite and package set when there is one; see :func:`debootstrap_rootfs`), then the
recipe's user, files and setup script (in a chroot), then ``mke2fs -d`` into a raw ext4 image,
then ``qemu-img convert`` to a zstd-compressed qcow2 under a temporary name; the image boots
(-kernel/-initrd from its /boot, root=/dev/vda) and must answer over SSH, then it is hashed and
renamed to ``<name>-<sha256>.qcow2`` and its manifest is written last. A cloud image is
downloaded (verified), booted once with a cloud-init seed served from 127.0.0.1 that applies
the recipe and powers off, compressed, and boot-checked the same way.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
import tempfile
import time

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming
from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run
from ansible_collections.testfleet.infra.plugins.module_utils.vm.cloud_image import cloud_base_image, customise_cloud_image
from ansible_collections.testfleet.infra.plugins.module_utils.vm.rootfs import (
    KERNEL_CMDLINE,
    boot_files,
    compress_image,
    configure_rootfs,
    debootstrap_rootfs,
    installed_packages,
    make_disk,
)
from ansible_collections.testfleet.infra.plugins.module_utils.vm.steps import BuildError, remove_tree


# --- what is already built ----------------------------------------------------------------------

def find_built(output_dir, recipe):
    """The newest image in ``output_dir`` built from ``recipe`` (same name and recipe hash), as
    ``(image_path, manifest)``, or None. Reads only manifests and stats images: no hashing."""
    prefix = recipe.name + "-"
    found = []
    try:
        entries = list(os.scandir(output_dir))
    except FileNotFoundError:
        return None
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.name.endswith(image_naming.MANIFEST_SUFFIX):
            continue
        try:
            ref = image_naming.parse_image_file_name(entry.name)
            if ref.name != recipe.name:
                continue
            with open(entry.path, "rb") as handle:
                manifest = image_naming.parse_manifest(handle.read(), ref, source=entry.path)
            if manifest["recipe_sha256"] != recipe.sha256:
                continue
            image_path = os.path.join(output_dir, ref.image_file)
            if os.stat(image_path).st_size != manifest["size"]:
                continue
        except (OSError, image_naming.ImageError):
            continue
        found.append((manifest.get("built_at") or "", image_path, manifest))
    if not found:
        return None
    found.sort(key=lambda item: item[0])
    return found[-1][1], found[-1][2]


# --- the whole build ----------------------------------------------------------------------------

def check_image(image, boot, recipe, run_dir, accel, accel_reason, timeout=600, memory=1024, cpus=2, qemu=None):
    """Boot ``image`` (an overlay of it) until it answers over SSH as the recipe's user, and
    run the recipe's ``check``; raise BuildError otherwise. Returns what the manifest keeps."""
    vm = vm_run.VirtualMachine(image, run_dir, boot=boot, user=recipe.user["name"], accel=accel,
                               accel_reason=accel_reason, memory=memory, cpus=cpus, qemu=qemu, name="build-check")
    try:
        with vm:
            seconds = vm.wait_for_ssh(timeout)
            who = vm.ssh("id -un", timeout=60)
            if who.returncode != 0 or who.stdout.strip() != recipe.user["name"]:
                raise BuildError("the booted image did not run a command as %s: %s" % (
                    recipe.user["name"], (who.stderr or who.stdout).strip()))
            uname = vm.ssh("uname -r", timeout=60).stdout.strip()
            if recipe.data["check"]:
                check = vm.ssh(recipe.data["check"], timeout=600)
                if check.returncode != 0:
                    raise BuildError("the recipe's check %r failed in the booted image (exit %d): %s" % (
                        recipe.data["check"], check.returncode, (check.stderr or check.stdout).strip()[-2000:]))
    except vm_run.VmError as exc:
        raise BuildError("the boot check failed: %s" % exc)
    return {"accel": accel, "accel_reason": accel_reason, "boot_to_ssh_s": seconds, "kernel_release": uname,
            "checked_at": image_naming.utc_now_iso(), "check": recipe.data["check"]}


def build_image(recipe, output_dir, cache_dir, work_dir, steps, accel="auto", kvm_probe_file=None, boot_timeout=600,
                memory=1024, cpus=2, qemu=None, refresh_base=False, base_cache_keep=3, setup_timeout=3600):
    """Build ``recipe`` into ``output_dir``; return ``(image_path, manifest)``.

    The finished qcow2 has a temporary name (``.<name>.<pid>.building.qcow2``) until it booted
    and answered over SSH (:func:`check_image`, with ``accel``: auto, kvm or tcg); then it is
    hashed and renamed to ``<name>-<sha256>.qcow2``, and its manifest is written last.
    Temporary files live in ``work_dir`` and are removed whatever happens.
    """
    os.makedirs(output_dir, exist_ok=True)
    os.makedirs(work_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="vm-build-%s-" % recipe.name, dir=work_dir)
    temp_image = os.path.join(output_dir, ".%s.%d.building.qcow2" % (recipe.name, os.getpid()))
    began = time.monotonic()
    try:
        if recipe.base_kind == "debootstrap":
            rootfs = os.path.join(work, "rootfs")
            os.mkdir(rootfs, 0o755)
            base = debootstrap_rootfs(recipe, rootfs, cache_dir, steps, refresh=refresh_base, keep=base_cache_keep)
            configure_rootfs(recipe, rootfs, steps, setup_timeout=setup_timeout)
            kernel, initrd = boot_files(rootfs)
            boot = {"mode": "kernel", "kernel": kernel, "initrd": initrd, "cmdline": KERNEL_CMDLINE}
            kernel_file, initrd_file = os.path.join(work, "vmlinuz"), os.path.join(work, "initrd.img")
            shutil.copyfile(os.path.join(rootfs, kernel.lstrip("/")), kernel_file)
            shutil.copyfile(os.path.join(rootfs, initrd.lstrip("/")), initrd_file)
            packages = installed_packages(rootfs)
            raw = os.path.join(work, "disk.raw")
            make_disk(rootfs, raw, recipe.data["disk_size"], steps)
            remove_tree(rootfs)
            compress_image(raw, temp_image, steps)
            os.unlink(raw)
            check_boot = dict(boot, kernel_file=kernel_file, initrd_file=initrd_file)
            with steps.step("accel", "KVM or TCG for the boot check (%s)" % accel):
                chosen, reason = vm_run.choose_accel(accel, kernel=kernel_file, probe_file=kvm_probe_file, qemu=qemu)
        else:
            with steps.step("accel", "KVM or TCG for the build (%s)" % accel):
                chosen, reason = vm_run.choose_accel(accel, probe_file=kvm_probe_file, qemu=qemu)
            base_image = cloud_base_image(recipe, cache_dir, steps)
            base = {"kind": "cloud_image", "url": recipe.base["url"], "sha256": recipe.base["sha256"]}
            work_image = os.path.join(work, "work.qcow2")
            with steps.step("resize", "a working copy of %d MiB" % (recipe.data["disk_size"] // 1024 ** 2)):
                steps.run(["qemu-img", "convert", "-f", recipe.base["format"], "-O", "qcow2", base_image, work_image],
                          "copying the cloud image")
                steps.run(["qemu-img", "resize", work_image, str(recipe.data["disk_size"])], "resizing the disk")
            customise_cloud_image(recipe, work_image, steps, chosen, timeout=setup_timeout, qemu=qemu,
                                  memory=max(memory, 2048), cpus=cpus)
            compress_image(work_image, temp_image, steps, source_format="qcow2")
            boot = check_boot = {"mode": "disk"}
            packages = list(recipe.data["packages"])
        steps.note("boot check under %s (%s)" % (chosen, reason))
        with steps.step("boot-check", "booting the image until it answers over SSH (%s)" % chosen):
            checked = check_image(temp_image, check_boot, recipe, os.path.join(work, "boot-check"), chosen, reason,
                                  timeout=boot_timeout, memory=memory, cpus=cpus, qemu=qemu)
        with steps.step("hash", "SHA-256 of the image"):
            sha = image_naming.file_sha256(temp_image)
        size = os.stat(temp_image).st_size
        final = os.path.join(output_dir, image_naming.image_file_name(recipe.name, sha))
        files.rename_into_place(temp_image, final, mode=0o644)
        manifest = image_naming.make_manifest(
            recipe.name, sha, size, recipe_sha256=recipe.sha256, base=base, packages=packages,
            recipe_packages=list(recipe.data["packages"]), boot=boot, user=recipe.user["name"],
            boot_check=checked, build_seconds=round(time.monotonic() - began, 1), recipe=_recipe_summary(recipe))
        manifest_path = os.path.join(output_dir, image_naming.manifest_file_name(recipe.name, sha))
        files.write_atomic(manifest_path, image_naming.manifest_bytes(manifest), mode=0o644)
        return final, manifest
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp_image)
        remove_tree(work)


def _recipe_summary(recipe):
    """The normalised recipe as the manifest keeps it (the setup script by its hash)."""
    data = copy.deepcopy(recipe.data)
    if data["setup"]:
        data["setup"] = {"sha256": hashlib.sha256(data["setup"].encode("utf-8")).hexdigest()}
    return data
