#!/usr/bin/env python
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install a collection artifact (the tarball of ``ansible-galaxy collection build``) on a host.

    install_collection.py [--check] [--keep-src] SRC DEST

The role ``collection_artifact`` runs it on the host (``ansible.builtin.script``; a collection's
roles cannot ship modules), with the host's Python and nothing else: no ansible-core. It puts
the collection of the tarball SRC into DEST/ansible_collections/<namespace>/<name>:

- unchanged when the installed MANIFEST.json is byte for byte the artifact's and every installed
  file has the checksum FILES.json names;
- otherwise it unpacks the tarball into a fresh directory beside DEST/ansible_collections (same
  file system), refusing members outside it and anything but files, directories and symlinks
  inside it, checks FILES.json against MANIFEST.json and every file against FILES.json, and only
  then renames the directory into place and removes the previous one: a failed or cut-short
  install leaves the installed collection as it was.

Files belong to the user running it (root); directories get mode 0755, files keep the
artifact's modes (0644, or 0755 for executables) without group or other write. SRC is removed
afterwards unless --keep-src. It prints one JSON object: changed, path, version, files_sha256,
previous (version and FILES.json checksum installed before, or null), and msg on failure (exit 1).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import argparse
import hashlib
import json
import os
import shutil
import stat
import tarfile
import sys
import tempfile


class ArtifactError(Exception):
    """The artifact is not a collection tarball, or its files do not match FILES.json."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_member(tar, name):
    try:
        handle = tar.extractfile(name)
    except KeyError:
        handle = None
    if handle is None:
        raise ArtifactError("the artifact has no %s: not a collection tarball" % name)
    return handle.read()


def _checked_members(tar):
    """The members, when each is a plain file, directory or symlink that stays inside."""
    members = tar.getmembers()
    for member in members:
        parts = member.name.split("/")
        if member.name.startswith("/") or ".." in parts:
            raise ArtifactError("refusing the member %r: outside the collection" % member.name)
        if member.issym():
            target = os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
            if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise ArtifactError("refusing the symlink %r -> %r: outside the collection" % (member.name, member.linkname))
        elif not (member.isfile() or member.isdir()):
            raise ArtifactError("refusing the member %r: not a file, directory or symlink" % member.name)
    return members


def _verify(root, manifest_bytes):
    """Raise ArtifactError unless the files under root are those FILES.json lists."""
    manifest = json.loads(manifest_bytes)
    files_path = os.path.join(root, "FILES.json")
    if not os.path.isfile(files_path):
        raise ArtifactError("FILES.json is missing")
    expected = manifest["file_manifest_file"]["chksum_sha256"]
    if _sha256(files_path) != expected:
        raise ArtifactError("FILES.json does not have the checksum MANIFEST.json names")
    with open(files_path, "rb") as handle:
        entries = json.load(handle)["files"]
    for entry in entries:
        path = os.path.join(root, entry["name"])
        if entry["ftype"] == "dir":
            if not os.path.isdir(path):
                raise ArtifactError("directory %s is missing" % entry["name"])
        elif not os.path.isfile(path):
            raise ArtifactError("file %s is missing" % entry["name"])
        elif _sha256(path) != entry["chksum_sha256"]:
            raise ArtifactError("file %s does not have the checksum FILES.json names" % entry["name"])


def _installed_matches(target, manifest_bytes):
    path = os.path.join(target, "MANIFEST.json")
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        if handle.read() != manifest_bytes:
            return False
    try:
        _verify(target, manifest_bytes)
    except (ArtifactError, ValueError, KeyError):
        return False
    return True


def _describe(target):
    """'<version> (FILES.json sha256 <checksum>)' of the installed collection, or None."""
    try:
        with open(os.path.join(target, "MANIFEST.json"), "rb") as handle:
            manifest = json.load(handle)
        return "%s (FILES.json sha256 %s)" % (manifest["collection_info"]["version"],
                                              manifest["file_manifest_file"]["chksum_sha256"])
    except (OSError, IOError, ValueError, KeyError, TypeError):
        return None


def _remove_leftovers(dest, namespace, name):
    """Directories of an install that was cut short (a crash between mkdtemp and rename)."""
    for entry in os.listdir(dest):
        if entry.startswith((".install-%s.%s-" % (namespace, name), ".previous-%s.%s-" % (namespace, name))):
            shutil.rmtree(os.path.join(dest, entry), ignore_errors=True)


def _unpack(tar, members, staging):
    if hasattr(tarfile, "data_filter"):
        tar.extractall(staging, members=members, filter="data")
    else:
        tar.extractall(staging, members=members)  # checked by _checked_members
    uid, gid = os.geteuid(), os.getegid()
    for top, dirs, files in os.walk(staging):
        for name in dirs + files:
            path = os.path.join(top, name)
            mode = os.lstat(path).st_mode
            if os.getuid() == 0:
                os.lchown(path, uid, gid)
            if stat.S_ISDIR(mode):
                os.chmod(path, 0o755)
            elif stat.S_ISREG(mode):
                os.chmod(path, (stat.S_IMODE(mode) & 0o755) | 0o644)
    os.chmod(staging, 0o755)


def install(src, dest, check_mode):
    with tarfile.open(src, "r:gz") as tar:
        manifest_bytes = _read_member(tar, "MANIFEST.json")
        try:
            manifest = json.loads(manifest_bytes)
            info = manifest["collection_info"]
            namespace, name, version = info["namespace"], info["name"], info["version"]
            files_sha256 = manifest["file_manifest_file"]["chksum_sha256"]
        except (ValueError, KeyError, TypeError):
            raise ArtifactError("MANIFEST.json of the artifact is not a collection manifest")
        parent = os.path.join(dest, "ansible_collections", namespace)
        target = os.path.join(parent, name)
        result = {"path": target, "version": version, "files_sha256": files_sha256,
                  "previous": _describe(target)}
        result["changed"] = not _installed_matches(target, manifest_bytes)
        if not result["changed"] or check_mode:
            return result
        members = _checked_members(tar)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        _remove_leftovers(dest, namespace, name)
        # Beside the collections tree (same file system, so the renames are atomic), not in it:
        # a leftover of a crash is no collection.
        staging = tempfile.mkdtemp(prefix=".install-%s.%s-" % (namespace, name), dir=dest)
        try:
            _unpack(tar, members, staging)
            _verify(staging, manifest_bytes)
            previous = None
            if os.path.lexists(target):
                previous = tempfile.mkdtemp(prefix=".previous-%s.%s-" % (namespace, name), dir=dest)
                os.rename(target, os.path.join(previous, name))
            os.rename(staging, target)
            staging = None
            if previous:
                shutil.rmtree(previous)
        finally:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
        return result


def main(argv=None):
    parser = argparse.ArgumentParser(description="Install a collection artifact, verified, by swapping in a fresh directory.")
    parser.add_argument("src", help="the artifact (.tar.gz) on this host")
    parser.add_argument("dest", help="the collections directory (holds ansible_collections/)")
    parser.add_argument("--check", action="store_true", help="only say whether it would install")
    parser.add_argument("--keep-src", action="store_true", help="do not remove SRC afterwards")
    args = parser.parse_args(argv)
    if args.check and not os.path.isfile(args.src):
        # Check mode: the role did not copy the artifact, because the installed collection differs.
        print(json.dumps({"changed": True, "msg": "would install %s" % args.src}))
        return 0
    try:
        result = install(args.src, args.dest, args.check)
    except (ArtifactError, tarfile.TarError, OSError, IOError) as error:
        result = {"failed": True, "changed": False,
                  "msg": "cannot install the collection artifact %s: %s" % (args.src, error)}
    finally:
        if not args.keep_src and not args.check:
            try:
                os.unlink(args.src)
            except OSError:
                pass
    print(json.dumps(result, sort_keys=True))
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
