# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Debootstrap images: the root file system (cached as a tarball per suite and package set),
its configuration in a chroot, the fragments every image carries, and the disk image made from it.

Every image has, besides the recipe's packages: a kernel, systemd, udev, OpenSSH, sudo, DHCP on
its first NIC (systemd-networkd; DNS is QEMU's user-mode resolver 10.0.2.3), and the unit
``testfleet-ssh-keys``: at boot it installs the SSH keys that the host hands over through QEMU's
``fw_cfg`` (a per-boot client key and host key, see vm_run.py), so no private key is ever baked
into an image.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming
from ansible_collections.testfleet.infra.plugins.module_utils.vm.recipe import BUILD_FORMAT, canonical_json
from ansible_collections.testfleet.infra.plugins.module_utils.vm.steps import (
    BuildError,
    chroot_env,
    hostname_for,
    locked,
    mounts_under,
    path_inside,
    write_file,
)


# QEMU user-mode networking answers DNS here (systemd-resolved fails to configure under debootstrap)
GUEST_RESOLV_CONF = "nameserver 10.0.2.3\n"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0"
MASKED_UNITS = ("systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "dpkg-db-backup.timer")
SSH_KEYS_UNIT = "testfleet-ssh-keys.service"


# --- the fragments every image carries ---------------------------------------------------------

SSH_KEYS_SCRIPT = """#!/bin/sh
# Installed by testfleet (vm_image): at boot, install the SSH keys that the host handed over
# through QEMU's fw_cfg (vm_run.py): the test user's per-boot key, and the host key, so the
# client can check it. Without them, an ed25519 host key is made here.
set -u
dir=/sys/firmware/qemu_fw_cfg/by_name/opt/org.testfleet
[ -d "$dir" ] || modprobe qemu_fw_cfg 2>/dev/null || true
mkdir -p /run/testfleet/authorized_keys
chmod 0755 /run/testfleet /run/testfleet/authorized_keys
if [ -r "$dir/authorized_keys/raw" ]; then
    install -m 0644 "$dir/authorized_keys/raw" /run/testfleet/authorized_keys/@USER@
fi
if [ -r "$dir/ssh_host_ed25519_key/raw" ]; then
    install -m 0600 "$dir/ssh_host_ed25519_key/raw" /etc/ssh/ssh_host_ed25519_key
    ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub
fi
if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then
    rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub
    ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
fi
"""

SSH_KEYS_UNIT_TEXT = """[Unit]
Description=testfleet: SSH keys handed over by the host (QEMU fw_cfg)
Before=ssh.service sshd.service
After=systemd-modules-load.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/testfleet-ssh-keys
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

SSHD_DROP_IN = """# testfleet (vm_image): keys from the recipe, plus the per-boot key from the host (fw_cfg)
AuthorizedKeysFile .ssh/authorized_keys /run/testfleet/authorized_keys/%u
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
UseDNS no
"""

NETWORK_UNIT = """[Match]
Name=en* eth*

[Network]
DHCP=yes
"""


def image_fragments(user):
    """The files testfleet puts into every image: {path: (content, mode)}."""
    return {
        "/usr/local/sbin/testfleet-ssh-keys": (SSH_KEYS_SCRIPT.replace("@USER@", user), 0o755),
        "/etc/systemd/system/" + SSH_KEYS_UNIT: (SSH_KEYS_UNIT_TEXT, 0o644),
        "/etc/ssh/sshd_config.d/testfleet.conf": (SSHD_DROP_IN, 0o644),
    }


# --- debootstrap images -------------------------------------------------------------------------

def base_cache_key(recipe):
    """What a cached debootstrap tarball depends on: suite, mirror, variant, components, packages."""
    spec = dict(recipe.base, packages=recipe.all_packages(), format=BUILD_FORMAT)
    return hashlib.sha256(canonical_json(spec)).hexdigest()


def _prune_base_cache(cache_dir, keep):
    tarballs = sorted(glob.glob(os.path.join(cache_dir, "debootstrap-*.tar")), key=os.path.getmtime, reverse=True)
    for old in tarballs[keep:]:
        for path in (old, old + ".json"):
            with contextlib.suppress(OSError):
                os.unlink(path)


def debootstrap_rootfs(recipe, rootfs, cache_dir, steps, refresh=False, keep=3):
    """Fill the empty directory ``rootfs`` with the base system of ``recipe``.

    A tarball of the same base (:func:`base_cache_key`) in ``cache_dir`` is unpacked (seconds);
    otherwise debootstrap runs (minutes) and its result is kept there for the next build with
    the same suite and packages (whatever its files and setup script), up to ``keep`` tarballs.
    ``refresh`` runs debootstrap even when a tarball exists (newer packages). Returns a dict
    describing the base (for the manifest).
    """
    spec = recipe.base
    key = base_cache_key(recipe)
    os.makedirs(cache_dir, exist_ok=True)
    tarball = os.path.join(cache_dir, "debootstrap-%s-%s.tar" % (spec["suite"], key[:16]))
    info = {"kind": "debootstrap", "suite": spec["suite"], "mirror": spec["mirror"], "variant": spec["variant"],
            "components": spec["components"], "base_key": key}
    with locked(tarball + ".lock", what="the debootstrap cache"):
        if os.path.exists(tarball) and not refresh:
            with steps.step("base", "unpacking the cached base %s" % os.path.basename(tarball)):
                steps.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tarball, "-C", rootfs],
                          "unpacking %s" % tarball)
                os.utime(tarball)
            info.update(cached=True, **_read_json(tarball + ".json"))
            return info
        argv = ["debootstrap", "--variant=" + spec["variant"] if spec["variant"] != "default" else None,
                "--components=" + ",".join(spec["components"]), "--include=" + ",".join(recipe.all_packages()),
                spec["suite"], rootfs, spec["mirror"]]
        with steps.step("debootstrap", "debootstrap %s from %s (%d packages asked for; a few minutes)"
                        % (spec["suite"], spec["mirror"], len(recipe.all_packages()))):
            steps.run([arg for arg in argv if arg], "debootstrap of %s" % spec["suite"], timeout=3600)
        made = {"debootstrapped_at": image_naming.utc_now_iso()}
        with steps.step("base-cache", "keeping the base as %s" % os.path.basename(tarball)):
            partial = tarball + ".part"
            steps.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-cpf", partial, "-C", rootfs, "."],
                      "saving the base to %s" % partial)
            files.write_atomic(tarball + ".json", json.dumps(made) + "\n", mode=0o644)
            files.rename_into_place(partial, tarball)
            _prune_base_cache(cache_dir, keep)
        info.update(cached=False, **made)
        return info


def _read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def chroot_mounts(rootfs, resolv_conf=True):
    """proc and sysfs mounted in ``rootfs``, the host's DNS, and no service starts (policy-rc.d),
    for commands run in the chroot; all undone afterwards."""
    mounted = []
    policy = os.path.join(rootfs, "usr/sbin/policy-rc.d")
    resolv = os.path.join(rootfs, "etc/resolv.conf")
    saved_resolv = None
    try:
        for kind, point in (("proc", "proc"), ("sysfs", "sys")):
            target = os.path.join(rootfs, point)
            os.makedirs(target, exist_ok=True)
            proc = subprocess.run(["mount", "-t", kind, kind, target], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BuildError("cannot mount %s on %s: %s" % (kind, target, proc.stderr.strip()))
            mounted.append(target)
        write_file(policy, "#!/bin/sh\n# testfleet: no service starts while the image is built\nexit 101\n", 0o755)
        if resolv_conf and os.path.exists("/etc/resolv.conf"):
            if os.path.lexists(resolv):
                saved_resolv = resolv + ".testfleet-saved"
                os.rename(resolv, saved_resolv)
            shutil.copyfile("/etc/resolv.conf", resolv)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(policy)
        if saved_resolv is not None:
            with contextlib.suppress(OSError):
                os.unlink(resolv)
            os.rename(saved_resolv, resolv)
        for target in reversed(mounted):
            subprocess.run(["umount", target], capture_output=True, check=False)
            if mounts_under(target):
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def configure_rootfs(recipe, rootfs, steps, setup_timeout=3600):
    """Turn a debootstrapped root file system into the recipe's image (in place)."""
    user = recipe.user
    run_in = ["chroot", rootfs]
    with steps.step("configure", "system settings, the test user %s, %d files, setup script: %s"
                    % (user["name"], len(recipe.data["files"]), "yes" if recipe.data["setup"] else "no")):
        hostname = hostname_for(recipe.name)
        write_file(os.path.join(rootfs, "etc/hostname"), hostname + "\n")
        write_file(os.path.join(rootfs, "etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost "
                   "ip6-loopback\n" % hostname)
        write_file(os.path.join(rootfs, "etc/fstab"), "/dev/vda\t/\text4\tdefaults,errors=remount-ro\t0\t1\n")
        write_file(os.path.join(rootfs, "etc/systemd/network/80-testfleet-dhcp.network"), NETWORK_UNIT)
        write_file(os.path.join(rootfs, "etc/resolv.conf"), GUEST_RESOLV_CONF)
        for path, (content, mode) in image_fragments(user["name"]).items():
            write_file(path_inside(rootfs, path), content, mode)
        with chroot_mounts(rootfs, resolv_conf=False):
            env = chroot_env()
            steps.run(run_in + ["systemctl", "enable", "systemd-networkd.service", SSH_KEYS_UNIT],
                      "enabling the network and SSH key units", env=env)
            # nothing waits for a network that a test VM may not configure the same way, and a
            # throwaway VM runs no housekeeping (it costs seconds of boot under TCG)
            steps.run(run_in + ["systemctl", "mask"] + list(MASKED_UNITS), "masking units a test VM does not need",
                      env=env)
            useradd = ["useradd", "--create-home", "--user-group", "--shell", user["shell"], user["name"]]
            steps.run(run_in + useradd, "creating the user %s" % user["name"], env=env)
            steps.run(run_in + ["passwd", "--lock", "root"], "locking root's password", env=env)
        home = os.path.join(rootfs, "home", user["name"])
        ssh_dir = os.path.join(home, ".ssh")
        uid, gid = _ids(rootfs, user["name"])
        os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
        keys = "".join(key + "\n" for key in user["ssh_authorized_keys"])
        write_file(os.path.join(ssh_dir, "authorized_keys"), keys, 0o600)
        for path in (ssh_dir, os.path.join(ssh_dir, "authorized_keys")):
            os.chown(path, uid, gid)
        os.chmod(ssh_dir, 0o700)
        if user["sudo"]:
            write_file(os.path.join(rootfs, "etc/sudoers.d/testfleet-user"), "%s ALL=(ALL) NOPASSWD:ALL\n" % user["name"],
                       0o440)
        for index, spec in enumerate(recipe.data["files"]):
            target = path_inside(rootfs, spec["path"])
            write_file(target, recipe.file_content(index), int(spec["mode"], 8))
            owner = "%s:%s" % (spec["owner"], spec["group"])
            if owner != "root:root":
                steps.run(run_in + ["chown", owner, spec["path"]], "chown %s %s" % (owner, spec["path"]),
                          env=chroot_env())
    if recipe.data["setup"]:
        with steps.step("setup", "the recipe's setup script (in a chroot)"):
            script = os.path.join(rootfs, "root/.testfleet-setup")
            write_file(script, recipe.data["setup"], 0o700)
            interpreter = [] if recipe.data["setup"].startswith("#!") else ["/bin/sh", "-e"]
            with chroot_mounts(rootfs):
                try:
                    steps.run(run_in + interpreter + ["/root/.testfleet-setup"], "the setup script",
                              timeout=setup_timeout, env=chroot_env())
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(script)
    with steps.step("clean", "removing caches, host keys and this machine's identity"):
        with chroot_mounts(rootfs, resolv_conf=False):
            steps.run(run_in + ["apt-get", "clean"], "apt-get clean", env=chroot_env())
        for pattern in ("var/lib/apt/lists/*_*", "etc/ssh/ssh_host_*", "var/cache/debconf/*-old", "var/log/*.log",
                        "root/.bash_history"):
            for path in glob.glob(os.path.join(rootfs, pattern)):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        write_file(os.path.join(rootfs, "etc/machine-id"), "")
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(rootfs, "var/lib/dbus/machine-id"))


def _ids(rootfs, user):
    with open(os.path.join(rootfs, "etc/passwd")) as handle:
        for line in handle:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
    raise BuildError("the user %s was not created in the image" % user)


def installed_packages(rootfs):
    """``name=version`` of every package installed in ``rootfs`` (sorted)."""
    proc = subprocess.run(["dpkg-query", "--admindir", os.path.join(rootfs, "var/lib/dpkg"), "-W",
                           "-f", "${db:Status-Abbrev}\t${Package}=${Version}\n"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError("cannot list the packages of the image: %s" % proc.stderr.strip())
    return sorted(line.split("\t", 1)[1] for line in proc.stdout.splitlines() if line.startswith("ii"))


def _version_key(path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", os.path.basename(path))]


def boot_files(rootfs):
    """The newest kernel in the image's /boot and its initrd: (image path, image path)."""
    kernels = sorted(glob.glob(os.path.join(rootfs, "boot", "vmlinuz-*")), key=_version_key)
    if not kernels:
        raise BuildError("the image has no kernel in /boot (is linux-image-amd64 installed?)")
    version = os.path.basename(kernels[-1])[len("vmlinuz-"):]
    initrd = os.path.join(rootfs, "boot", "initrd.img-" + version)
    if not os.path.exists(initrd):
        raise BuildError("the image has no initrd for %s (%s)" % (version, initrd))
    return "/boot/vmlinuz-" + version, "/boot/initrd.img-" + version


def make_disk(rootfs, raw_path, size, steps):
    """An ext4 file system of ``size`` bytes (sparse) holding ``rootfs``, labelled root."""
    with steps.step("mke2fs", "ext4 image of %d MiB from the root file system" % (size // 1024 ** 2)):
        steps.run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-m", "1", "-d", rootfs, raw_path,
                   "%dk" % (size // 1024)], "mke2fs (is disk_size large enough for the image?)")


def compress_image(source, target, steps, source_format="raw"):
    with steps.step("qcow2", "compressing into a qcow2 (zstd)"):
        steps.run(["qemu-img", "convert", "-c", "-f", source_format, "-O", "qcow2", "-o", "compression_type=zstd",
                   source, target], "qemu-img convert")
