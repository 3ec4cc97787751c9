# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does KVM work here? Find out by trying it: boot a Linux kernel under KVM and watch it run.

/dev/kvm existing is not enough: on some hosts (nested virtualisation, this team's CI machines)
the device opens but guests hang, or QEMU aborts when it sets up the CPU. So the probe boots a
kernel with no root file system: a working guest reaches "VFS: Unable to mount root fs" and
panics (a second or two under KVM), which, with ``panic=-1`` and ``-no-reboot``, ends QEMU.
KVM works when the kernel's panic message shows up on the serial console within the timeout.

The one probe of the collection: ``vm/run.py`` (:func:`choose_accel`) calls :func:`probe`, and
the worker role copies this file to its hosts and runs it as a script, so it imports nothing but
Python's standard library::

    python3 kvm.py [--kernel FILE] [--fetch-dir DIR] [--qemu qemu-system-x86_64]
                   [--cpu host] [--timeout 30] [--accel kvm]

prints one JSON object, ``{"kvm": true|false, "reason": "...", "kernel": "..."}`` (the shape of
the worker's ``kvm-probe.json``, which :func:`choose_accel` reads) and exits 0 either way.
The kernel: ``--kernel``, else the newest ``/boot/vmlinuz-*``, else (with ``--fetch-dir``) the
kernel of Debian's ``linux-image-amd64`` package, downloaded once with ``apt-get download`` and
kept in that directory (hosts such as microVMs have no kernel in /boot). ``--accel tcg`` checks
the probe itself (the same kernel under emulation: slower, but it boots).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

DEFAULT_QEMU = "qemu-system-x86_64"
PANIC = b"Unable to mount root fs"
_PR_SET_PDEATHSIG = 1


def die_with_parent():
    """In a child before exec: SIGKILL when the parent dies (survives exec). Every QEMU this
    collection starts gets it, so no VM outlives the process that started it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def newest_host_kernel():
    """The newest ``/boot/vmlinuz-*`` of this host, or None."""
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    return found[-1] if found else None


def find_kernel(fetch_dir=None):
    """``(kernel, None)``, or ``(None, why not)``: this host's newest kernel, else Debian's,
    downloaded once into ``fetch_dir``."""
    kernel = newest_host_kernel()
    if kernel:
        return kernel, None
    if not fetch_dir:
        return None, "no kernel in /boot to boot (give --kernel or --fetch-dir)"
    cached = sorted(glob.glob(os.path.join(fetch_dir, "boot", "vmlinuz-*")))
    if cached:
        return cached[-1], None
    try:
        depends = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                                 check=True).stdout
        package = [line.split()[1] for line in depends.splitlines() if line.strip().startswith("Depends: linux-image-")][0]
        os.makedirs(fetch_dir, exist_ok=True)
        subprocess.run(["apt-get", "download", "-q", package], cwd=fetch_dir, capture_output=True, check=True, timeout=600)
        deb = sorted(glob.glob(os.path.join(fetch_dir, package + "_*.deb")))[-1]
        subprocess.run("dpkg-deb --fsys-tarfile %s | tar -x -C %s --wildcards './boot/vmlinuz-*'" % (deb, fetch_dir),
                       shell=True, check=True, capture_output=True)
        os.unlink(deb)
    except (OSError, IndexError, subprocess.SubprocessError) as exc:
        return None, "no kernel in /boot, and fetching Debian's failed: %s" % exc
    cached = sorted(glob.glob(os.path.join(fetch_dir, "boot", "vmlinuz-*")))
    return (cached[-1], None) if cached else (None, "no kernel in the downloaded package")


def probe(kernel, qemu=None, timeout=20.0, cpu="host", accel="kvm"):
    """Boot ``kernel`` under ``accel`` without a root file system; it works when the kernel
    reaches its root-fs panic within ``timeout`` seconds. Returns ``(works, reason)``."""
    qemu = qemu or DEFAULT_QEMU
    if accel == "kvm" and not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user"
    binary = shutil.which(qemu)
    if binary is None:
        return False, "%s is not installed" % qemu
    argv = [binary, "-machine", "pc", "-accel", accel, "-cpu", cpu if accel == "kvm" else "max", "-m", "256",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-kernel", kernel,
            "-append", "console=ttyS0 panic=-1 loglevel=3", "-no-reboot"]
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False, preexec_fn=die_with_parent)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = None
        output.seek(0)
        text = output.read()
    what = accel.upper() if cpu == "host" or accel != "kvm" else "%s (-cpu %s)" % (accel.upper(), cpu)
    if PANIC in text:
        return True, "a %s guest booted %s to its root-fs panic" % (what, os.path.basename(kernel))
    if status is None:
        return False, "a %s guest did not boot within %g s: it hangs" % (what, timeout)
    lines = text.decode("utf-8", "replace").strip().splitlines()
    return False, "qemu ended with status %d before the %s guest booted: %s" % (
        status, what, lines[-1] if lines else "no output")


def main(argv=None):
    """The worker role's probe: prints the result as one JSON object (see the docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel")
    parser.add_argument("--fetch-dir")
    parser.add_argument("--qemu", default=DEFAULT_QEMU)
    parser.add_argument("--cpu", default="host", help="the -cpu of the guest under KVM (default host, as VM jobs use)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--accel", default="kvm", help="kvm (the probe), or tcg to check the probe itself")
    args = parser.parse_args(argv)
    kernel, problem = (args.kernel, None) if args.kernel else find_kernel(args.fetch_dir)
    works, reason = (False, problem) if kernel is None else probe(kernel, args.qemu, args.timeout, args.cpu, args.accel)
    json.dump({"kvm": works, "reason": reason, "kernel": kernel}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
