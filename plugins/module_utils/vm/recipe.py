# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM image recipes: their schema, validation and canonical hash.

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

:func:`load_recipe` reads a recipe file (strict YAML: a key given twice is an error). The
build itself is ``vm/build.py``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

HAS_YAML = files.HAS_YAML  # recipes are YAML files


BUILD_FORMAT = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_DISK_SIZE = 4 * 1024 ** 3
MIN_DISK_SIZE = 256 * 1024 ** 2
MAX_DISK_SIZE = 2 * 1024 ** 4
DEFAULT_USER = "tester"
# What every debootstrap image holds besides the recipe's packages.
BASE_PACKAGES = ("linux-image-amd64", "systemd-sysv", "udev", "openssh-server", "sudo")

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
