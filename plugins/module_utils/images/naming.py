# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM images: their content-addressed names and their manifests.

An image is the pair ``<name>-<sha256>.qcow2`` and ``<name>-<sha256>.manifest.json``:
``<sha256>`` is the SHA-256 (64 lowercase hex digits) of the qcow2 file's bytes and ``<name>``
matches :data:`NAME_RE` (``debian-12``, ``fedora-41.minimal``...). The manifest is a JSON object
with at least the keys of :data:`MANIFEST_KEYS`. :class:`ImageRef` is such a pair in memory;
``images/store.py`` keeps images, ``images/cache.py`` holds them on a worker.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
import re

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMAGE_SUFFIX = ".qcow2"
MANIFEST_SUFFIX = ".manifest.json"
_FILE_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,63})-(?P<sha256>[0-9a-f]{64})"
                      r"(?P<suffix>\.qcow2|\.manifest\.json)$")
_REF_RE = re.compile(r"^(?:(?P<name>[a-z0-9][a-z0-9._-]{0,63})-)?(?P<sha256>[0-9a-f]{64})(?:\.qcow2)?$")

# What every manifest has; vm_image writes them, the store checks them.
MANIFEST_KEYS = ("name", "sha256", "size", "recipe_sha256", "base", "packages", "built_at")


CHUNK = 1024 * 1024  # what hashing reads at a time


class ImageError(Exception):
    """Base class of every error of this module; ``str()`` says what to fix."""


class ImageNameError(ImageError, ValueError):
    """A name, SHA-256, file name or image reference does not follow the naming rules."""


class ManifestError(ImageError, ValueError):
    """A manifest is not valid JSON, misses a key, or does not describe the image it goes with."""


class ImageRef(collections.namedtuple("ImageRef", "name sha256")):
    """An image: its name and the SHA-256 of its qcow2 bytes (``name`` None in a bare-hash ref)."""

    __slots__ = ()

    @property
    def image_file(self):
        return image_file_name(self.name, self.sha256)

    @property
    def manifest_file(self):
        return manifest_file_name(self.name, self.sha256)

    def __str__(self):
        return "%s-%s" % (self.name, self.sha256) if self.name else self.sha256


# --- naming -------------------------------------------------------------------------------------

def check_name(name):
    """Return ``name`` if it may name an image (:data:`NAME_RE`), else raise ImageNameError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ImageNameError("an image name is 1-64 lowercase letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit; got %r" % (name,))
    return name


def check_sha256(sha256):
    """Return ``sha256`` if it is 64 lowercase hex digits, else raise ImageNameError."""
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise ImageNameError("a SHA-256 is 64 lowercase hexadecimal digits; got %r" % (sha256,))
    return sha256


def image_file_name(name, sha256):
    """``<name>-<sha256>.qcow2``."""
    return "%s-%s%s" % (check_name(name), check_sha256(sha256), IMAGE_SUFFIX)


def manifest_file_name(name, sha256):
    """``<name>-<sha256>.manifest.json``."""
    return "%s-%s%s" % (check_name(name), check_sha256(sha256), MANIFEST_SUFFIX)


def parse_image_file_name(file_name):
    """The :class:`ImageRef` of ``<name>-<sha256>.qcow2`` or ``<name>-<sha256>.manifest.json``.

    ``file_name`` is a file name, not a path (use ``os.path.basename`` first). Anything else
    raises ImageNameError.
    """
    match = _FILE_RE.match(file_name) if isinstance(file_name, str) else None
    if not match:
        raise ImageNameError("%r is not an image file name (<name>-<sha256>.qcow2 or <name>-<sha256>.manifest.json)"
                             % (file_name,))
    return ImageRef(match.group("name"), match.group("sha256"))


def is_manifest_file_name(file_name):
    return file_name.endswith(MANIFEST_SUFFIX)


def parse_image_ref(text):
    """An image reference as a person or a playbook writes it: ``<name>-<sha256>``,
    ``<name>-<sha256>.qcow2`` or a bare ``<sha256>`` (then ``name`` is None)."""
    match = _REF_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ImageNameError("%r is not an image reference (<name>-<sha256> or a 64-digit SHA-256)" % (text,))
    return ImageRef(match.group("name"), match.group("sha256"))


def file_sha256(path, progress=None):
    """The SHA-256 (hex) of the file at ``path``.

    ``progress(done_bytes, total_bytes)`` is called after each MiB read, and once at the end.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as handle:
        total = os.fstat(handle.fileno()).st_size
        done = 0
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
            done += count
            if progress is not None:
                progress(done, total)
    if progress is not None and done == 0:
        progress(0, total)
    return digest.hexdigest()


def utc_now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- manifests ----------------------------------------------------------------------------------

def make_manifest(name, sha256, size, recipe_sha256, base, packages, built_at=None, **extra):
    """A manifest dict with the required keys (``built_at`` defaults to now, UTC) and ``extra``."""
    manifest = dict(extra)
    manifest.update(name=check_name(name), sha256=check_sha256(sha256), size=size, recipe_sha256=recipe_sha256,
                    base=base, packages=list(packages), built_at=built_at or utc_now_iso())
    return check_manifest(manifest)


def manifest_bytes(manifest):
    """The manifest as stored: JSON with sorted keys, two-space indent, a final newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def check_manifest(manifest, ref=None, size=None):
    """Return ``manifest`` if it is valid (and describes ``ref`` and ``size`` when given)."""
    if not isinstance(manifest, dict):
        raise ManifestError("a manifest is a JSON object, got %s" % type(manifest).__name__)
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ManifestError("the manifest lacks %s" % ", ".join(missing))
    try:
        check_name(manifest["name"])
        check_sha256(manifest["sha256"])
    except ImageNameError as exc:
        raise ManifestError("manifest: %s" % exc)
    if not isinstance(manifest["size"], int) or isinstance(manifest["size"], bool) or manifest["size"] < 0:
        raise ManifestError("manifest: size must be a number of bytes, got %r" % (manifest["size"],))
    if not isinstance(manifest["packages"], list):
        raise ManifestError("manifest: packages must be a list")
    if ref is not None and (manifest["name"], manifest["sha256"]) != (ref.name, ref.sha256):
        raise ManifestError("the manifest describes %s-%s, not %s" % (manifest["name"], manifest["sha256"], ref))
    if size is not None and manifest["size"] != size:
        raise ManifestError("the manifest of %s says %d bytes, the image has %d" % (manifest["name"], manifest["size"],
                                                                                    size))
    return manifest


def parse_manifest(data, ref=None, size=None, source="manifest"):
    """The manifest dict of ``data`` (bytes or str), checked with :func:`check_manifest`."""
    try:
        manifest = json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except ValueError as exc:
        raise ManifestError("%s is not valid JSON: %s" % (source, exc))
    try:
        return check_manifest(manifest, ref, size)
    except ManifestError as exc:
        raise ManifestError("%s: %s" % (source, exc))
