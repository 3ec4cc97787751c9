# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of VM images: build, unchanged rebuild, boot to SSH, fetch from the store.

    sudo .venv/bin/python bench/images.py [--work /var/tmp] [--cache-dir DIR] [--mirror URL]

Needs root (debootstrap, chroot), the Debian packages qemu-system-x86, qemu-utils, debootstrap,
e2fsprogs and openssh-client, and Debian's mirror. It runs the modules in this process, as
Ansible would run them, in a fresh work directory (removed at the end):

``build_s``              vm_image: a minimal Debian 12 image from nothing (debootstrap from the
                         mirror, unless ``--cache-dir`` holds the base already: see ``base_cached``),
                         boot check included; ``build_steps`` has each step's seconds
``kvm_probe_s``          the part of build_s that chose KVM or TCG: the probe boots the image's
                         kernel under KVM (where KVM hangs, as here, that costs the probe's
                         timeout, 20 s, once per cache: later builds and boots reuse the result);
                         ``build_without_probe_s`` is build_s without it
``accel``                what the builds and boots used (``kvm`` or ``tcg``) and ``accel_reason``
``build_cached_base_s``  vm_image: another recipe with the same packages (another setup script):
                         the debootstrapped base comes from the cache
``rebuild_unchanged_s``  vm_image again with the first recipe: nothing to do (median of 5)
``boot_to_ssh_s``        vm_run: QEMU started on an overlay of the image until a command ran
                         over SSH (median of 3 boots, kernel and initrd already extracted);
                         ``boot_to_ssh_runs`` has each, ``boot_files_extract_s`` the one-time
                         extraction of the kernel and initrd from the image
``boot_to_ssh_kvm_s``    the same under KVM, where KVM works (null otherwise)
``fetch_cold_s``         image_fetch from a directory store into an empty cache (download and
                         hash), after image_publish (``publish_s``)
``fetch_warm_s``         image_fetch of the same image again (cached, verified by its sidecar)
``image_bytes``          size of the qcow2 (zstd-compressed)

Each phase prints one JSON line; the last line is one object with all the figures.
"""

import argparse
import contextlib
import importlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from collection_path import import_collection


def say(text):
    print("bench/images: %s" % text, file=sys.stderr, flush=True)


def run_module(name, args):
    """Run a module in this process with ``args``; return its result (what Ansible would get)."""
    from ansible.module_utils.testing import patch_module_args
    module = importlib.import_module("ansible_collections.testfleet.infra.plugins.modules." + name)
    out = io.StringIO()
    with patch_module_args(dict(args, _ansible_module_name="testfleet.infra." + name)), contextlib.redirect_stdout(out):
        try:
            module.main()
        except SystemExit:
            pass
    result = json.loads(out.getvalue())
    if result.get("failed"):
        raise SystemExit("bench/images: %s failed: %s" % (name, result.get("msg")))
    return result


def timed(function, *args):
    began = time.monotonic()
    value = function(*args)
    return time.monotonic() - began, value


def emit(figures):
    print(json.dumps(figures, sort_keys=True), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/var/tmp", help="where the bench's work directory goes (a few GB)")
    parser.add_argument("--cache-dir", help="vm_image's cache (default: a fresh one, so the first build debootstraps)")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--boots", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/images: building images needs root (debootstrap, chroot)")
    import_collection()
    from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming
    from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run

    work = tempfile.mkdtemp(prefix="bench-images-", dir=args.work)
    figures = {}
    try:
        cache_dir = args.cache_dir or os.path.join(work, "cache")
        probe_file = os.path.join(cache_dir, "kvm-probe.json")
        os.makedirs(cache_dir, exist_ok=True)
        output = os.path.join(work, "images")
        recipe = {"name": "bench-debian-12", "base": {"debootstrap": {"suite": "bookworm", "mirror": args.mirror}},
                  "setup": "echo one > /etc/bench-setup\n", "check": "cat /etc/bench-setup"}
        build_args = {"recipe": recipe, "output_dir": output, "cache_dir": cache_dir, "work_dir": work,
                      "kvm_probe_file": probe_file}

        say("building a minimal Debian 12 image (%s)" % ("base cached" if args.cache_dir else "debootstrap"))
        build_s, built = timed(run_module, "vm_image", build_args)
        assert built["changed"], "the first build built nothing"
        # KVM or TCG: the first build probes (boots the image's kernel under KVM) and keeps the
        # result in probe_file, which every later build and boot reuses
        chosen = (built["manifest"]["boot_check"]["accel"], built["manifest"]["boot_check"]["accel_reason"])
        probe_s = built["timings"].get("accel", 0.0)
        figures.update(kvm_probe_s=round(probe_s, 2), accel=chosen[0], accel_reason=chosen[1],
                       build_without_probe_s=round(build_s - probe_s, 2))
        figures.update(build_s=round(build_s, 2), build_steps=built["timings"],
                       base_cached=bool(built["manifest"]["base"].get("cached")),
                       image_bytes=built["manifest"]["size"],
                       build_boot_check_s=built["manifest"]["boot_check"]["boot_to_ssh_s"])
        emit({"phase": "build", "build_s": figures["build_s"], "steps": built["timings"],
              "base_cached": figures["base_cached"], "image_bytes": figures["image_bytes"]})

        unchanged = []
        for dummy in range(5):
            seconds, again = timed(run_module, "vm_image", build_args)
            assert not again["changed"] and again["path"] == built["path"]
            unchanged.append(seconds)
        figures["rebuild_unchanged_s"] = round(statistics.median(unchanged), 4)
        emit({"phase": "rebuild-unchanged", "runs_s": [round(value, 4) for value in unchanged]})

        say("building a second recipe on the cached base")
        other = dict(build_args, recipe=dict(recipe, name="bench-debian-12-b", setup="echo two > /etc/bench-setup\n"))
        cached_s, second = timed(run_module, "vm_image", other)
        assert second["changed"] and second["manifest"]["base"].get("cached")
        figures.update(build_cached_base_s=round(cached_s, 2))
        emit({"phase": "build-cached-base", "build_cached_base_s": figures["build_cached_base_s"],
              "steps": second["timings"]})

        say("booting the image %d times (%s)" % (args.boots, chosen[0]))
        extract_s, boot = timed(vm_run.boot_spec, built["path"], built["manifest"], os.path.join(work, "boot"))
        figures["boot_files_extract_s"] = round(extract_s, 2)
        runs = [_boot(vm_run, built, boot, chosen, os.path.join(work, "vm-%d" % index)) for index in range(args.boots)]
        figures.update(boot_to_ssh_s=round(statistics.median(runs), 2), boot_to_ssh_runs=runs)
        emit({"phase": "boot", "accel": chosen[0], "runs_s": runs, "extract_s": figures["boot_files_extract_s"]})
        if chosen[0] == "kvm":
            figures["boot_to_ssh_kvm_s"] = figures["boot_to_ssh_s"]
        else:
            figures["boot_to_ssh_kvm_s"] = None
            figures["boot_to_ssh_kvm_note"] = "KVM does not work here: %s" % chosen[1]

        say("publishing to a directory store, fetching into an empty cache, then again")
        store = os.path.join(work, "store")
        publish_s, dummy = timed(run_module, "image_publish", {"store_url": store, "image": built["path"]})
        ref = image_naming.parse_image_file_name(os.path.basename(built["path"]))
        fetch_args = {"store_url": store, "name": ref.name, "sha256": ref.sha256,
                      "cache_dir": os.path.join(work, "image-cache")}
        cold_s, cold = timed(run_module, "image_fetch", fetch_args)
        warm_s, warm = timed(run_module, "image_fetch", fetch_args)
        assert cold["changed"] and not warm["changed"]
        assert image_naming.file_sha256(cold["path"]) == ref.sha256
        figures.update(publish_s=round(publish_s, 3), fetch_cold_s=round(cold_s, 3), fetch_warm_s=round(warm_s, 4))
        emit({"phase": "fetch", "publish_s": figures["publish_s"], "fetch_cold_s": figures["fetch_cold_s"],
              "fetch_warm_s": figures["fetch_warm_s"], "store": "directory", "bytes": ref and cold.get("size")})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(figures)


def _boot(vm_run, built, boot, chosen, run_dir):
    vm = vm_run.VirtualMachine(built["path"], run_dir, boot=boot, user=built["manifest"]["user"], accel=chosen[0],
                               accel_reason=chosen[1], name="bench")
    with vm:
        seconds = vm.wait_for_ssh(600)
        assert vm.ssh("cat /etc/bench-setup").stdout.strip() == "one"
    return seconds


if __name__ == "__main__":
    main()
