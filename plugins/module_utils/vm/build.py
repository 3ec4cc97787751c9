# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building VM test images from a recipe: the recipe's schema, its canonical hash, the build steps.

A recipe (YAML, or the same mapping in a playbook) says what goes into an image::

    name: debian-12-minimal            # the image's name (image_naming.NAME_RE)
    base:                              # exactly one of:
      debootstrap:                     #   Debian and Ubuntu, made from packages
        suite: bookworm
        mirror: http://deb.debian.org/debian     # default
        variant: minbase               # default; or buildd, or default (debootstrap's own)
        components: [main]             # default
      # cloud_image:                   #   others (Fedora, CentOS...): a cloud image
      #   url: https://.../Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2
      #   sha256: <64 hex digits>      #   the download must hash to this
      #   format: qcow2                #   default; or raw
    packages: [python3, curl]          # installed besides what every image has
    files:                             # written into the image, in this order
      - path: /etc/motd
        content: "hello\\n"            # or src: a file, relative to the recipe file
        mode: "0644"                   # defaults: 0644, root, root
        owner: root
        group: root
    setup: |                           # a script run as root inside the image at the end
      echo done
    user:                              # the test user jobs log in as (over SSH)
      name: tester                     # default
      ssh_authorized_keys: []          # public keys of people; jobs get a per-boot key
      sudo: true                       # passwordless sudo (default)
      shell: /bin/bash                 # default
    disk_size: 4G                      # the guest's disk (sparse; default 4G)
    check: "python3 --version"         # a command the boot check also runs (as the user)
    revision: ""                       # any text: changes the hash only (a reviewed rebuild)

:func:`parse_recipe` validates it (every problem names the key path; unknown keys are refused
with a did-you-mean hint) and returns a :class:`Recipe`, whose ``sha256`` is the canonical hash:
the SHA-256 of the normalised recipe as compact JSON with sorted keys, defaults filled in,
packages sorted and deduplicated, each file by the SHA-256 of its content (so a ``src`` that
moves but keeps its bytes changes nothing) and :data:`BUILD_FORMAT` (bumped when the build
itself changes what an image holds). A cloud image's ``url`` is left out (its ``sha256`` says
what it is, so a mirror that moves does not rebuild anything).

Every image has, besides the recipe's packages: a kernel, systemd, udev, OpenSSH, sudo, DHCP on
its first NIC (systemd-networkd; DNS is QEMU's user-mode resolver 10.0.2.3), and the unit
``testfleet-ssh-keys``: at boot it installs the SSH keys that the host hands over through QEMU's
``fw_cfg`` (a per-boot client key and host key, see vm_run.py), so no private key is ever baked
into an image.

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

import base64
import contextlib
import copy
import difflib
import fcntl
import glob
import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time

try:
    import yaml
    HAS_YAML = True
except ImportError:
    yaml = None
    HAS_YAML = False

from ansible.module_utils.urls import open_url

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run

BUILD_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_DISK_SIZE = 4 * 1024 ** 3
MIN_DISK_SIZE = 256 * 1024 ** 2
MAX_DISK_SIZE = 2 * 1024 ** 4
DEFAULT_USER = "tester"
# What every debootstrap image holds besides the recipe's packages.
BASE_PACKAGES = ("linux-image-amd64", "systemd-sysv", "udev", "openssh-server", "sudo")
# QEMU user-mode networking answers DNS here (systemd-resolved fails to configure under debootstrap)
GUEST_RESOLV_CONF = "nameserver 10.0.2.3\n"
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0"
MASKED_UNITS = ("systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "dpkg-db-backup.timer")
SSH_KEYS_UNIT = "testfleet-ssh-keys.service"
BUILD_OK = "TESTFLEET-BUILD-OK"
BUILD_FAILED = "TESTFLEET-BUILD-FAILED"

_SUITE_RE = re.compile(r"^[a-z][a-z0-9.-]{1,31}$")
_PACKAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._:~-]{0,127}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_GROUP_OR_USER_RE = re.compile(r"^(?:[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})$")
_MODE_RE = re.compile(r"^0?[0-7]{3,4}$")
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_VARIANTS = ("minbase", "buildd", "default")
_IMAGE_FORMATS = ("qcow2", "raw")

_TOP_KEYS = ("name", "base", "packages", "files", "setup", "user", "disk_size", "check", "revision")
_DEBOOTSTRAP_KEYS = ("suite", "mirror", "variant", "components")
_CLOUD_KEYS = ("url", "sha256", "format")
_FILE_KEYS = ("path", "content", "src", "mode", "owner", "group")
_USER_KEYS = ("name", "ssh_authorized_keys", "sudo", "shell")


class RecipeError(ValueError):
    """A recipe is not valid; ``str()`` names the recipe, the key path and what to fix."""


class BuildError(Exception):
    """A build step failed; ``str()`` says which and shows the end of its output."""


# --- the recipe ---------------------------------------------------------------------------------

class Recipe:
    """A validated recipe. ``data`` is the normalised recipe (defaults filled in, a file as
    ``{path, sha256, mode, owner, group}``); ``contents`` maps a file's index to its bytes."""

    def __init__(self, data, contents, source):
        self.data = data
        self.contents = contents
        self.source = source
        self.sha256 = recipe_sha256(data)

    @property
    def name(self):
        return self.data["name"]

    @property
    def base_kind(self):
        return next(iter(self.data["base"]))

    @property
    def base(self):
        return self.data["base"][self.base_kind]

    @property
    def user(self):
        return self.data["user"]

    def all_packages(self):
        """Every package the image gets: the base set (debootstrap images) plus the recipe's."""
        if self.base_kind == "debootstrap":
            return sorted(set(BASE_PACKAGES) | set(self.data["packages"]))
        return list(self.data["packages"])

    def file_content(self, index):
        return self.contents[index]


def canonical_json(value):
    """The bytes that are hashed: compact JSON, sorted keys, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def recipe_sha256(data):
    """The canonical hash of a normalised recipe (see the module's documentation)."""
    hashed = copy.deepcopy(data)
    if "cloud_image" in hashed["base"]:
        hashed["base"]["cloud_image"].pop("url", None)
    hashed["format"] = BUILD_FORMAT
    return hashlib.sha256(canonical_json(hashed)).hexdigest()


def _where(source, path):
    return "%s: %s" % (source, path) if path else source


def _check_keys(mapping, known, source, path):
    if not isinstance(mapping, dict):
        raise RecipeError("%s: must be a mapping, got %s" % (_where(source, path), type(mapping).__name__))
    for key in mapping:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            text = "%s: unknown key %r" % (_where(source, path) if path else source, key)
            text += " (did you mean %r?)" % hint[0] if hint else " (known: %s)" % ", ".join(known)
            raise RecipeError(text)


def _string(value, source, path, pattern=None, what=None, allow_empty=False):
    if not isinstance(value, str) or (not value and not allow_empty):
        raise RecipeError("%s: must be a non-empty string, got %r" % (_where(source, path), value))
    if pattern is not None and not pattern.match(value):
        raise RecipeError("%s: %r is not %s" % (_where(source, path), value, what))
    return value


def _string_list(value, source, path, pattern=None, what=None):
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError("%s: must be a list, got %s" % (_where(source, path), type(value).__name__))
    return [_string(item, source, "%s[%d]" % (path, index), pattern, what) for index, item in enumerate(value)]


def parse_size(value, source="recipe", path="disk_size"):
    """Bytes of ``4G``, ``512M``, ``4GiB``, ``1.5T`` or an integer (bytes)."""
    if isinstance(value, bool):
        raise RecipeError("%s: must be a size such as 4G, got %r" % (_where(source, path), value))
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise RecipeError("%s: must be a size such as 4G or 512M (or bytes), got %r" % (_where(source, path), value))
        factor = 1024 ** " KMGT".index(match.group(2).upper() or " ")
        size = int(float(match.group(1)) * factor)
    if not MIN_DISK_SIZE <= size <= MAX_DISK_SIZE:
        raise RecipeError("%s: %r is outside 256M..2T" % (_where(source, path), value))
    return size


def _parse_base(base, source):
    _check_keys(base, ("debootstrap", "cloud_image"), source, "base")
    if len(base) != 1:
        raise RecipeError("%s: give exactly one of debootstrap or cloud_image" % _where(source, "base"))
    kind, spec = next(iter(base.items()))
    path = "base." + kind
    if kind == "debootstrap":
        _check_keys(spec, _DEBOOTSTRAP_KEYS, source, path)
        if "suite" not in spec:
            raise RecipeError("%s: suite is required (e.g. bookworm)" % _where(source, path))
        mirror = _string(spec.get("mirror", DEFAULT_MIRROR), source, path + ".mirror")
        if not re.match(r"^(https?|file)://\S+$", mirror):
            raise RecipeError("%s: %r is not an http(s):// or file:// URL" % (_where(source, path + ".mirror"), mirror))
        variant = _string(spec.get("variant", "minbase"), source, path + ".variant")
        if variant not in _VARIANTS:
            raise RecipeError("%s: must be one of %s, got %r" % (_where(source, path + ".variant"),
                                                                 ", ".join(_VARIANTS), variant))
        components = _string_list(spec.get("components", ["main"]), source, path + ".components",
                                  re.compile(r"^[a-z][a-z0-9-]*$"), "a component name") or ["main"]
        return {"debootstrap": {
            "suite": _string(spec["suite"], source, path + ".suite", _SUITE_RE, "a suite name such as bookworm"),
            "mirror": mirror.rstrip("/"), "variant": variant, "components": components}}
    _check_keys(spec, _CLOUD_KEYS, source, path)
    for key in ("url", "sha256"):
        if key not in spec:
            raise RecipeError("%s: %s is required" % (_where(source, path), key))
    url = _string(spec["url"], source, path + ".url")
    if not re.match(r"^(https?|file)://\S+$", url):
        raise RecipeError("%s: %r is not an http(s):// or file:// URL" % (_where(source, path + ".url"), url))
    sha = _string(spec["sha256"], source, path + ".sha256", _SHA256_RE, "64 hexadecimal digits")
    image_format = _string(spec.get("format", "qcow2"), source, path + ".format")
    if image_format not in _IMAGE_FORMATS:
        raise RecipeError("%s: must be one of %s, got %r" % (_where(source, path + ".format"),
                                                             ", ".join(_IMAGE_FORMATS), image_format))
    return {"cloud_image": {"url": url, "sha256": sha.lower(), "format": image_format}}


def _parse_files(files, source, base_dir):
    if files is None:
        return [], {}
    if not isinstance(files, list):
        raise RecipeError("%s: must be a list, got %s" % (_where(source, "files"), type(files).__name__))
    parsed, contents = [], {}
    for index, item in enumerate(files):
        path = "files[%d]" % index
        _check_keys(item, _FILE_KEYS, source, path)
        target = _string(item.get("path"), source, path + ".path")
        if not target.startswith("/") or "/../" in target + "/" or target.rstrip("/") == "":
            raise RecipeError("%s: must be an absolute path inside the image, got %r"
                              % (_where(source, path + ".path"), target))
        if ("content" in item) == ("src" in item):
            raise RecipeError("%s: give exactly one of content or src" % _where(source, path))
        if "content" in item:
            content = item["content"]
            if not isinstance(content, str):
                raise RecipeError("%s: must be a string" % _where(source, path + ".content"))
            data = content.encode("utf-8")
        else:
            src = _string(item["src"], source, path + ".src")
            if not os.path.isabs(src):
                if base_dir is None:
                    raise RecipeError("%s: %r is relative, but the recipe is not a file: give an absolute path"
                                      % (_where(source, path + ".src"), src))
                src = os.path.join(base_dir, src)
            try:
                with open(src, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                raise RecipeError("%s: cannot read %s: %s" % (_where(source, path + ".src"), src, exc.strerror or exc))
        mode = item.get("mode", "0644")
        if isinstance(mode, int) and not isinstance(mode, bool):
            mode = "%04o" % mode if mode > 0o777 or mode < 0o100 else "0%o" % mode
        mode = _string(str(mode), source, path + ".mode", _MODE_RE, "an octal mode such as \"0644\"")
        parsed.append({
            "path": os.path.normpath(target), "sha256": hashlib.sha256(data).hexdigest(),
            "mode": "%04o" % int(mode, 8),
            "owner": _string(str(item.get("owner", "root")), source, path + ".owner", _GROUP_OR_USER_RE, "a user name"),
            "group": _string(str(item.get("group", "root")), source, path + ".group", _GROUP_OR_USER_RE, "a group name"),
        })
        contents[index] = data
    return parsed, contents


def _parse_user(user, source):
    user = {} if user is None else user
    _check_keys(user, _USER_KEYS, source, "user")
    sudo = user.get("sudo", True)
    if not isinstance(sudo, bool):
        raise RecipeError("%s: must be true or false" % _where(source, "user.sudo"))
    keys = _string_list(user.get("ssh_authorized_keys"), source, "user.ssh_authorized_keys")
    for index, key in enumerate(keys):
        if "\n" in key.strip() or not re.match(r"^(ssh-|ecdsa-|sk-)\S+ \S+", key.strip()):
            raise RecipeError("%s: is not one OpenSSH public key line" % _where(source, "user.ssh_authorized_keys[%d]"
                                                                                % index))
    name = _string(user.get("name", DEFAULT_USER), source, "user.name", _USER_RE, "a user name")
    if name == "root":
        raise RecipeError("%s: the test user cannot be root" % _where(source, "user.name"))
    shell = _string(user.get("shell", "/bin/bash"), source, "user.shell")
    if not shell.startswith("/"):
        raise RecipeError("%s: must be an absolute path" % _where(source, "user.shell"))
    return {"name": name, "ssh_authorized_keys": [key.strip() for key in keys], "sudo": sudo, "shell": shell}


def parse_recipe(data, source="recipe", base_dir=None):
    """Validate a recipe (a mapping) and return a :class:`Recipe`; raise RecipeError.

    ``base_dir`` is where relative ``src`` files are found (the recipe file's directory).
    """
    _check_keys(data, _TOP_KEYS, source, "")
    for key in ("name", "base"):
        if key not in data:
            raise RecipeError("%s: %s is required" % (source, key))
    try:
        name = image_naming.check_name(data["name"])
    except image_naming.ImageNameError as exc:
        raise RecipeError("%s: %s" % (_where(source, "name"), exc))
    base = _parse_base(data["base"], source)
    packages = _string_list(data.get("packages"), source, "packages", _PACKAGE_RE, "a package name")
    files, contents = _parse_files(data.get("files"), source, base_dir)
    setup = data.get("setup")
    if setup is not None and not isinstance(setup, str):
        raise RecipeError("%s: must be a script (a string)" % _where(source, "setup"))
    check = data.get("check")
    if check is not None and (not isinstance(check, str) or not check.strip()):
        raise RecipeError("%s: must be a command (a non-empty string)" % _where(source, "check"))
    revision = data.get("revision", "")
    if not isinstance(revision, (str, int)) or isinstance(revision, bool):
        raise RecipeError("%s: must be a string" % _where(source, "revision"))
    normalised = {
        "name": name, "base": base, "packages": sorted(set(packages)), "files": files,
        "setup": setup or None, "user": _parse_user(data.get("user"), source),
        "disk_size": parse_size(data.get("disk_size", DEFAULT_DISK_SIZE), source),
        "check": check, "revision": str(revision),
    }
    return Recipe(normalised, contents, source)


def load_recipe(path):
    """Read and validate the recipe file at ``path`` (YAML, a key given twice is an error);
    relative ``src`` are next to it."""
    try:
        data = files.load_yaml_file(path, "recipe")
    except files.FileProblem as exc:
        raise RecipeError(str(exc)) from None
    return parse_recipe(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


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


# --- helpers of the build -----------------------------------------------------------------------

class Steps:
    """Progress of a build: one line per step start and end in the progress log (``tail -f``
    it), also handed to ``log`` (the module's ``module.log``); ``timings`` maps step -> seconds.
    Commands' full output goes to ``output_path``."""

    def __init__(self, progress, output_path, log=None, clock=time.monotonic):
        self.progress = progress
        self.output_path = output_path
        self.log = log
        self.clock = clock
        self.timings = {}
        self.started = clock()

    def note(self, text):
        if self.progress is not None:
            self.progress.note(text)
        if self.log is not None:
            self.log(text)

    @contextlib.contextmanager
    def step(self, name, what):
        began = self.clock()
        self.note("%s: %s" % (name, what))
        try:
            yield
        except BaseException as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.note("%s: failed after %.1f s: %s" % (name, self.clock() - began, first))
            raise
        seconds = self.clock() - began
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)
        self.note("%s: done in %.1f s" % (name, seconds))

    def run(self, argv, what, timeout=3600, env=None, cwd=None, input_data=None):
        """Run a command, its output appended to the output log; raise BuildError on failure."""
        with open(self.output_path, "ab") as output:
            output.write(("\n$ %s\n" % " ".join(shlex.quote(str(arg)) for arg in argv)).encode("utf-8"))
            output.flush()
            start = output.tell()
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, timeout=timeout, env=env, cwd=cwd,
                                      input=input_data, check=False)
            except subprocess.TimeoutExpired:
                raise BuildError("%s did not finish within %d s (output: %s)" % (what, timeout, self.output_path))
            except OSError as exc:
                raise BuildError("%s: cannot run %s: %s" % (what, argv[0], exc.strerror or exc))
        if proc.returncode != 0:
            raise BuildError("%s failed (exit %d): %s (whole output: %s)" % (
                what, proc.returncode, _tail(self.output_path, start), self.output_path))


def _tail(path, start=0, lines=15):
    try:
        with open(path, "rb") as handle:
            handle.seek(max(start, os.path.getsize(path) - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def locked(path, timeout=3600.0, what="the build"):
    """An exclusive fcntl lock on ``path`` (created), waiting up to ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError("%s: %s is locked by another build for more than %d s" % (what, path, timeout))
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def _mounts_under(path):
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mounts") as handle:
            for line in handle:
                point = line.split()[1].replace("\\040", " ")
                if point == path or point.startswith(path + "/"):
                    found.append(point)
    except OSError:
        pass
    return found


def remove_tree(path):
    """Remove a build tree, never through a mount point (a left bind mount would be followed)."""
    if not os.path.lexists(path):
        return
    for point in sorted(_mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    left = _mounts_under(path)
    if left:
        raise BuildError("%s still has mounts (%s): not removing it" % (path, ", ".join(left)))
    shutil.rmtree(path, ignore_errors=True)


def _chroot_env(extra=None):
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
    env.update(extra or {})
    return env


def _write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path):
        os.unlink(path)
    with open(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.chmod(path, mode)


def _inside(rootfs, path):
    """``path`` of the image, as a host path under ``rootfs``, refusing escapes through symlinks."""
    parent = os.path.realpath(os.path.join(rootfs, os.path.dirname(path).lstrip("/")))
    root = os.path.realpath(rootfs)
    if parent != root and not parent.startswith(root + "/"):
        raise BuildError("%s leads out of the image (through a symlink)" % path)
    return os.path.join(parent, os.path.basename(path))


def hostname_for(name):
    return (re.sub(r"[^a-z0-9-]", "-", name).strip("-") or "testvm")[:63]


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
        _write(policy, "#!/bin/sh\n# testfleet: no service starts while the image is built\nexit 101\n", 0o755)
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
            if _mounts_under(target):
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)


def configure_rootfs(recipe, rootfs, steps, setup_timeout=3600):
    """Turn a debootstrapped root file system into the recipe's image (in place)."""
    user = recipe.user
    run_in = ["chroot", rootfs]
    with steps.step("configure", "system settings, the test user %s, %d files, setup script: %s"
                    % (user["name"], len(recipe.data["files"]), "yes" if recipe.data["setup"] else "no")):
        hostname = hostname_for(recipe.name)
        _write(os.path.join(rootfs, "etc/hostname"), hostname + "\n")
        _write(os.path.join(rootfs, "etc/hosts"), "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost "
               "ip6-loopback\n" % hostname)
        _write(os.path.join(rootfs, "etc/fstab"), "/dev/vda\t/\text4\tdefaults,errors=remount-ro\t0\t1\n")
        _write(os.path.join(rootfs, "etc/systemd/network/80-testfleet-dhcp.network"), NETWORK_UNIT)
        _write(os.path.join(rootfs, "etc/resolv.conf"), GUEST_RESOLV_CONF)
        for path, (content, mode) in image_fragments(user["name"]).items():
            _write(_inside(rootfs, path), content, mode)
        with chroot_mounts(rootfs, resolv_conf=False):
            env = _chroot_env()
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
        _write(os.path.join(ssh_dir, "authorized_keys"), keys, 0o600)
        for path in (ssh_dir, os.path.join(ssh_dir, "authorized_keys")):
            os.chown(path, uid, gid)
        os.chmod(ssh_dir, 0o700)
        if user["sudo"]:
            _write(os.path.join(rootfs, "etc/sudoers.d/testfleet-user"), "%s ALL=(ALL) NOPASSWD:ALL\n" % user["name"],
                   0o440)
        for index, spec in enumerate(recipe.data["files"]):
            target = _inside(rootfs, spec["path"])
            _write(target, recipe.file_content(index), int(spec["mode"], 8))
            owner = "%s:%s" % (spec["owner"], spec["group"])
            if owner != "root:root":
                steps.run(run_in + ["chown", owner, spec["path"]], "chown %s %s" % (owner, spec["path"]),
                          env=_chroot_env())
    if recipe.data["setup"]:
        with steps.step("setup", "the recipe's setup script (in a chroot)"):
            script = os.path.join(rootfs, "root/.testfleet-setup")
            _write(script, recipe.data["setup"], 0o700)
            interpreter = [] if recipe.data["setup"].startswith("#!") else ["/bin/sh", "-e"]
            with chroot_mounts(rootfs):
                try:
                    steps.run(run_in + interpreter + ["/root/.testfleet-setup"], "the setup script",
                              timeout=setup_timeout, env=_chroot_env())
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(script)
    with steps.step("clean", "removing caches, host keys and this machine's identity"):
        with chroot_mounts(rootfs, resolv_conf=False):
            steps.run(run_in + ["apt-get", "clean"], "apt-get clean", env=_chroot_env())
        for pattern in ("var/lib/apt/lists/*_*", "etc/ssh/ssh_host_*", "var/cache/debconf/*-old", "var/log/*.log",
                        "root/.bash_history"):
            for path in glob.glob(os.path.join(rootfs, pattern)):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        _write(os.path.join(rootfs, "etc/machine-id"), "")
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


# --- cloud images -------------------------------------------------------------------------------

def download_verified(url, sha256, target, progress=None, timeout=60.0, chunk=1024 * 1024):
    """Download ``url`` to ``target``; keep it only when it hashes to ``sha256``.

    The bytes go to ``target.part`` and are hashed as they arrive; a mismatch removes the part
    and raises BuildError, so ``target`` only ever holds the expected bytes.
    """
    partial = target + ".part"
    digest = hashlib.sha256()
    done = 0
    try:
        with contextlib.closing(open_url(url, timeout=timeout)) as answer, open(partial, "wb") as handle:
            total = int(answer.headers.get("Content-Length") or 0)
            while True:
                data = answer.read(chunk)
                if not data:
                    break
                digest.update(data)
                handle.write(data)
                done += len(data)
                if progress is not None:
                    progress("download", done, total)
    except Exception as exc:  # open_url raises OSError, ValueError and its own ConnectionError
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise BuildError("cannot download %s: %s" % (url, exc))
    if digest.hexdigest() != sha256.lower():
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise BuildError("%s hashes to %s, not to the recipe's sha256 %s: not used" % (url, digest.hexdigest(), sha256))
    files.rename_into_place(partial, target)
    return done


def cloud_base_image(recipe, cache_dir, steps, progress=None):
    """The verified base image of a cloud-image recipe, cached as ``cloud-<sha256>.img``."""
    spec = recipe.base
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, "cloud-%s.img" % spec["sha256"])
    with locked(target + ".lock", what="the cloud image cache"):
        if os.path.exists(target):
            with steps.step("base", "checking the cached %s" % os.path.basename(target)):
                if image_naming.file_sha256(target) == spec["sha256"]:
                    return target
                os.unlink(target)
        with steps.step("download", "downloading %s" % spec["url"]):
            download_verified(spec["url"], spec["sha256"], target, progress=progress)
    return target


def cloud_user_data(recipe):
    """The cloud-init user-data (#cloud-config) that applies ``recipe`` to a cloud image, then
    disables cloud-init and powers the machine off. The setup's outcome is written to the
    serial console (BUILD_OK or BUILD_FAILED), which the build reads."""
    user = recipe.user
    users = [{"name": user["name"], "shell": user["shell"], "lock_passwd": True,
              "ssh_authorized_keys": list(user["ssh_authorized_keys"])}]
    if user["sudo"]:
        users[0]["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    write_files = []
    for path, (content, mode) in sorted(image_fragments(user["name"]).items()):
        write_files.append({"path": path, "content": content, "permissions": "0%o" % mode, "owner": "root:root"})
    for index, spec in enumerate(recipe.data["files"]):
        write_files.append({"path": spec["path"], "encoding": "b64",
                            "content": base64.b64encode(recipe.file_content(index)).decode("ascii"),
                            "permissions": spec["mode"], "owner": "%s:%s" % (spec["owner"], spec["group"]),
                            "defer": True})
    if recipe.data["setup"]:
        write_files.append({"path": "/root/.testfleet-setup", "content": recipe.data["setup"], "permissions": "0700",
                            "owner": "root:root", "defer": True})
    setup = "/root/.testfleet-setup" if recipe.data["setup"] else "true"
    if recipe.data["setup"] and not recipe.data["setup"].startswith("#!"):
        setup = "/bin/sh -e /root/.testfleet-setup"
    finish = (
        "set -u\n"
        "if %s > /var/log/testfleet-setup.log 2>&1; then\n"
        "  rm -f /root/.testfleet-setup /etc/ssh/ssh_host_*\n"
        "  systemctl enable %s\n"
        "  touch /etc/cloud/cloud-init.disabled\n"
        "  : > /etc/machine-id\n"
        "  echo %s > /dev/ttyS0\n"
        "else\n"
        "  echo \"%s $? $(tail -n 5 /var/log/testfleet-setup.log | tr '\\n' ' ')\" > /dev/ttyS0\n"
        "fi\n" % (setup, SSH_KEYS_UNIT, BUILD_OK, BUILD_FAILED))
    document = {
        "users": users,
        "ssh_pwauth": False,
        "package_update": bool(recipe.data["packages"]),
        "packages": list(recipe.data["packages"]),
        "write_files": write_files,
        "runcmd": [["sh", "-c", finish]],
        "power_state": {"mode": "poweroff", "condition": True, "timeout": 30},
    }
    if not HAS_YAML:
        return "#cloud-config\n" + json.dumps(document, indent=1) + "\n"
    return "#cloud-config\n" + yaml.safe_dump(document, default_flow_style=False, sort_keys=False)


class SeedServer:
    """A NoCloud seed (meta-data, user-data) served over HTTP on 127.0.0.1 for one build; the
    guest reaches it as 10.0.2.2 (QEMU's user-mode network). ``url`` is what the guest uses."""

    def __init__(self, user_data, instance_id):
        documents = {"/meta-data": ("instance-id: %s\nlocal-hostname: %s\n" % (instance_id, instance_id)).encode("utf-8"),
                 "/user-data": user_data.encode("utf-8"), "/vendor-data": b""}
        self.requests = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                body = documents.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://10.0.2.2:%d/" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def smbios_seed_argument(url):
    """The QEMU argument that points cloud-init's NoCloud datasource at ``url``."""
    return "type=1,serial=ds=nocloud;s=%s" % url.replace(",", ",,")


def customise_cloud_image(recipe, work_image, steps, accel, timeout=3600, qemu=None, memory=2048, cpus=2):
    """Boot ``work_image`` once with the recipe's cloud-init seed; it applies the recipe and
    powers off. Raise BuildError unless the serial console shows BUILD_OK."""
    serial = work_image + ".serial.log"
    with SeedServer(cloud_user_data(recipe), "testfleet-build-%s" % recipe.sha256[:12]) as seed:
        with steps.step("cloud-init", "applying the recipe with cloud-init (%s; the VM powers off when done)" % accel):
            argv = vm_run.qemu_command(work_image, accel=accel, memory=memory, cpus=cpus, serial=serial, qemu=qemu,
                                       smbios=smbios_seed_argument(seed.url))
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
                                      preexec_fn=vm_run._die_with_parent)
            except subprocess.TimeoutExpired:
                raise BuildError("the cloud-init build did not power off within %d s: %s" % (timeout, _tail(serial)))
            text = ""
            with contextlib.suppress(OSError):
                with open(serial, "rb") as handle:
                    text = handle.read().decode("utf-8", "replace")
            if BUILD_OK not in text:
                failed = [line for line in text.splitlines() if BUILD_FAILED in line]
                raise BuildError("the cloud-init build failed (qemu exit %d): %s" % (
                    proc.returncode, failed[-1] if failed else _tail(serial) or proc.stderr.decode("utf-8", "replace")))


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


# --- the whole build ----------------------------------------------------------------------------

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
