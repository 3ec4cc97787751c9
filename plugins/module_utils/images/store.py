# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image store (S3 or a local directory): its interface, the directory store, open_store.

Images are named as ``images/naming.py`` says (``<name>-<sha256>.qcow2`` and its
``.manifest.json``); the S3 backend is ``images/s3_store.py``.

The store
    A flat folder: both files of every image side by side, in an S3 bucket (any S3-compatible
    server, ``s3://bucket/prefix``, with ``endpoint_url``) or in a local directory
    (``file:///srv/images`` or a plain path). The manifest is written last and removed first:
    an image is *published* when its manifest is there. Nothing else in the folder is ever
    touched, except the directory store's own ``.incoming/`` (uploads in progress).

    Uploads never leave a partial object under a final name. S3: an object becomes visible
    only when its PutObject or CompleteMultipartUpload succeeds; the bytes are hashed as they are
    sent and a multipart upload whose bytes do not hash to the expected SHA-256 is aborted
    instead of completed, so nothing appears (see ``images/s3_store.py``); the SHA-256 is read
    back after the upload with the size. Directory: the
    bytes are copied (and hashed) into ``.incoming/``, fsynced and renamed into place.

boto3 is imported on first use of an S3 store (it costs about 0.2 s), so code that only names
images, or uses a directory store, neither needs nor pays for it.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
from urllib.parse import unquote, urlsplit

from ansible_collections.testfleet.infra.plugins.module_utils.files import atomic_file, remove_quietly
from ansible_collections.testfleet.infra.plugins.module_utils.images.naming import (
    CHUNK,
    ImageError,
    ImageNameError,
    ManifestError,
    check_manifest,
    file_sha256,
    is_manifest_file_name,
    manifest_bytes,
    parse_image_file_name,
    parse_manifest,
)

DOWNLOAD_CHUNK = 64 * 1024   # what a download writes at a time (and keeps when it breaks)
MIB = 1024 * 1024
S3_MIN_PART = 5 * MIB        # S3's smallest part (all but the last)
S3_MAX_PARTS = 10000
DEFAULT_PART_SIZE = 16 * MIB
DEFAULT_CONCURRENCY = 4
INCOMING = ".incoming"


class ImageStoreError(ImageError):
    """The store failed or refused an operation."""


class MissingLibrary(ImageStoreError):
    """A Python library the store needs is not installed (``.library`` names it)."""

    def __init__(self, library, error):
        super().__init__("the S3 image store needs the Python library %s: %s" % (library, error))
        self.library = library
        self.error = error


class ImageNotFound(ImageStoreError):
    """The store does not hold the file or image asked for."""


class IntegrityError(ImageStoreError):
    """Bytes do not hash to the SHA-256 they should have, or a size is wrong."""


ObjectInfo = collections.namedtuple("ObjectInfo", "size modified sha256")
ObjectInfo.__doc__ = """A stored file: size in bytes, last change (seconds since the epoch), and
the SHA-256 the store keeps as metadata (None when the backend has none, or it was not set)."""


# --- the store ----------------------------------------------------------------------------------

class Download:
    """An open read of a stored file from ``offset``: iterate ``chunks()``, then ``close()``.

    ``offset`` is where the bytes start (0 when the server ignored a range), ``total`` the
    whole file's size.
    """

    def __init__(self, offset, total, chunks, close):
        self.offset = offset
        self.total = total
        self._chunks = chunks
        self._close = close

    def chunks(self):
        return self._chunks

    def close(self):
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HashingReader:
    """Reads a file sequentially and hashes what it hands out (sent bytes = hashed bytes)."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size):
        data = self.handle.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data


def check_transfer(reader, ref, size, where):
    if reader.count != size:
        raise IntegrityError("%s: read %d bytes of %s, expected %d (did the file change?)"
                             % (where, reader.count, ref.image_file, size))
    if reader.digest.hexdigest() != ref.sha256:
        raise IntegrityError("%s: the bytes of %s hash to %s, not to the SHA-256 in its name (the file is corrupt "
                             "or changed while it was sent); nothing was stored"
                             % (where, ref.image_file, reader.digest.hexdigest()))


class ImageStore:
    """Common logic of the backends; they provide ``head``, ``get``, ``put_bytes``,
    ``put_file``, ``read``, ``list_files``, ``delete`` and ``location`` on file names."""

    kind = None

    # -- images --
    def stored_image(self, ref):
        """What the store holds of ``ref``: a dict ``image`` (ObjectInfo or None), ``manifest``
        (the parsed manifest or None), ``problems`` (list of strings) and ``complete`` (bool)."""
        problems = []
        image = self.head(ref.image_file)
        data = self.get(ref.manifest_file)
        manifest = None
        if data is not None:
            try:
                manifest = parse_manifest(data, ref, source="stored %s" % ref.manifest_file)
            except ManifestError as exc:
                problems.append(str(exc))
        if image is None:
            problems.append("%s is not in the store" % ref.image_file)
        elif image.sha256 is not None and image.sha256 != ref.sha256:
            problems.append("the stored %s has the SHA-256 %s in its metadata" % (ref.image_file, image.sha256))
        elif image.sha256 is None and self.kind == "s3":
            problems.append("the stored %s has no sha256 metadata" % ref.image_file)
        if data is None:
            problems.append("%s is not in the store" % ref.manifest_file)
        if image is not None and manifest is not None and image.size != manifest["size"]:
            problems.append("the stored %s has %d bytes, its manifest says %d"
                            % (ref.image_file, image.size, manifest["size"]))
        return {"image": image, "manifest": manifest, "problems": problems, "complete": not problems}

    def image_ok(self, ref, size, stored=None):
        """True when the stored qcow2 of ``ref`` has ``size`` bytes and, in S3, the SHA-256
        metadata ``ref.sha256``. (A directory has no metadata: there a qcow2 gets its final name
        only after its bytes were hashed, so the name carries the SHA-256.)"""
        image = stored["image"] if stored is not None else self.head(ref.image_file)
        if image is None or image.size != size:
            return False
        return image.sha256 == ref.sha256 if self.kind == "s3" else True

    def get_manifest(self, ref):
        """The stored manifest of ``ref`` (checked), or None when the image is not published."""
        data = self.get(ref.manifest_file)
        if data is None:
            return None
        return parse_manifest(data, ref, source="stored %s" % ref.manifest_file)

    def list_images(self):
        """``{ImageRef: {"image": ObjectInfo|None, "manifest": ObjectInfo|None}}`` of every
        image file in the store (other files are ignored)."""
        images = {}
        for file_name, info in self.list_files():
            try:
                ref = parse_image_file_name(file_name)
            except ImageNameError:
                continue
            entry = images.setdefault(ref, {"image": None, "manifest": None})
            entry["manifest" if is_manifest_file_name(file_name) else "image"] = info
        return images

    def delete_image(self, ref):
        """Remove the manifest (unpublish) first, then the qcow2."""
        self.delete(ref.manifest_file)
        self.delete(ref.image_file)


class DirectoryStore(ImageStore):
    """A local directory (also an NFS mount, or what a web server serves): ``<root>/<file>``."""

    kind = "directory"

    def __init__(self, root):
        self.root = os.path.abspath(root)

    def __repr__(self):
        return "DirectoryStore(%r)" % self.root

    def describe(self):
        return self.root

    def _path(self, file_name):
        if "/" in file_name or file_name in ("", ".", ".."):
            raise ImageStoreError("invalid file name %r" % (file_name,))
        return os.path.join(self.root, file_name)

    def location(self, file_name):
        return self._path(file_name)

    def _fail(self, what, path, exc):
        return ImageStoreError("cannot %s %s: %s" % (what, path, exc.strerror or exc))

    def head(self, file_name):
        path = self._path(file_name)
        try:
            stat = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise self._fail("read", path, exc)
        return ObjectInfo(stat.st_size, stat.st_mtime, None)

    def get(self, file_name):
        path = self._path(file_name)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise self._fail("read", path, exc)

    def _incoming(self):
        folder = os.path.join(self.root, INCOMING)
        try:
            os.makedirs(folder, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise self._fail("create", folder, exc)
        return folder

    def _new_file(self, file_name):
        """A stream whose bytes become ``file_name`` when its block ends without error; they
        are written in ``.incoming/`` (see :meth:`stale_incoming`) until then."""
        return atomic_file(self._path(file_name), mode=0o644, prefix=file_name + ".", folder=self._incoming())

    def put_bytes(self, file_name, data):
        try:
            with self._new_file(file_name) as handle:
                handle.write(data)
        except OSError as exc:
            raise self._fail("write", self._path(file_name), exc)

    def put_file(self, ref, path, size, progress=None):
        """Copy the qcow2 at ``path`` in, hashing it on the way; it gets its name only when
        the copy has ``size`` bytes that hash to ``ref.sha256``."""
        try:
            with open(path, "rb") as source, self._new_file(ref.image_file) as handle:
                reader = HashingReader(source)
                while True:
                    data = reader.read(CHUNK)
                    if not data:
                        break
                    handle.write(data)
                    if progress is not None:
                        progress(reader.count, size)
                check_transfer(reader, ref, size, "copy to %s" % self.root)
        except OSError as exc:
            raise self._fail("write", self._path(ref.image_file), exc)

    def read(self, file_name, offset=0):
        path = self._path(file_name)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise ImageNotFound("%s is not in the store" % path)
            raise self._fail("read", path, exc)
        total = os.fstat(handle.fileno()).st_size
        offset = offset if 0 <= offset <= total else 0
        handle.seek(offset)

        def chunks():
            while True:
                data = handle.read(DOWNLOAD_CHUNK)
                if not data:
                    return
                yield data
        return Download(offset, total, chunks(), handle.close)

    def list_files(self):
        try:
            with os.scandir(self.root) as entries:
                found = []
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        found.append((entry.name, ObjectInfo(stat.st_size, stat.st_mtime, None)))
                return found
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise self._fail("list", self.root, exc)

    def delete(self, file_name):
        path = self._path(file_name)
        try:
            os.unlink(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise self._fail("remove", path, exc)

    def stale_incoming(self, older_than):
        """Leftovers of interrupted uploads in ``.incoming/`` last written before ``older_than``."""
        folder = os.path.join(self.root, INCOMING)
        try:
            with os.scandir(folder) as entries:
                return [(entry.name, entry.stat().st_size) for entry in entries
                        if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < older_than]
        except OSError:
            return []

    def delete_incoming(self, file_name):
        remove_quietly(os.path.join(self.root, INCOMING, os.path.basename(file_name)))


def open_store(url, endpoint_url=None, region=None, access_key=None, secret_key=None, profile=None, ca_file=None,
               timeout=60.0, part_size=DEFAULT_PART_SIZE, concurrency=DEFAULT_CONCURRENCY, client=None):
    """The store at ``url``: ``s3://bucket[/prefix]``, ``file:///dir`` or a plain directory path."""
    parts = urlsplit(url or "")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ImageStoreError("image store %s names no bucket (s3://bucket/prefix)" % url)
        from ansible_collections.testfleet.infra.plugins.module_utils.images import s3_store  # boto3 on first use

        return s3_store.S3Store(parts.netloc, unquote(parts.path), endpoint_url=endpoint_url, region=region,
                                access_key=access_key, secret_key=secret_key, profile=profile, ca_file=ca_file,
                                timeout=timeout, part_size=part_size, concurrency=concurrency, client=client)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ImageStoreError("image store %s: a file:// URL names a local directory (file:///dir)" % url)
        return DirectoryStore(unquote(parts.path))
    if parts.scheme == "" and url and url.startswith(("/", "~", ".")):
        return DirectoryStore(os.path.expanduser(url))
    raise ImageStoreError("image store %r: use s3://bucket/prefix, file:///dir or an absolute path" % (url,))


def publish_image(store, path, manifest=None, check_mode=False, progress=None):
    """Put the image at ``path`` (named ``<name>-<sha256>.qcow2``) and its manifest in ``store``.

    ``manifest`` (a dict) defaults to the ``.manifest.json`` next to ``path``. Nothing is sent
    when the store already holds the image with the right size and SHA-256 and a valid manifest
    (then ``changed`` is False). After an upload, the size and SHA-256 are read back. Returns a
    dict: ``changed``, ``ref``, ``size``, ``uploaded`` (what was sent: ``image``,
    ``manifest``), ``before`` (what the store held), ``manifest`` (the stored one).
    """
    ref = parse_image_file_name(os.path.basename(path))
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ImageError("cannot read the image %s: %s" % (path, exc.strerror or exc))
    if manifest is None:
        manifest_path = os.path.join(os.path.dirname(path), ref.manifest_file)
        try:
            with open(manifest_path, "rb") as handle:
                manifest = parse_manifest(handle.read(), ref, size, source=manifest_path)
        except OSError as exc:
            raise ManifestError("cannot read the manifest %s: %s" % (manifest_path, exc.strerror or exc))
    else:
        check_manifest(manifest, ref, size)

    stored = store.stored_image(ref)
    image_ok = store.image_ok(ref, size, stored)
    uploads = []
    if not image_ok:
        uploads.append("image")
    # a complete stored manifest stays (the first publication of these bytes wins); a missing
    # or broken one, or one of an image re-uploaded now, is (re)written
    if stored["manifest"] is None or stored["manifest"]["size"] != size or uploads:
        uploads.append("manifest")
    result = {"changed": bool(uploads), "ref": ref, "size": size, "uploaded": uploads,
              "before": stored, "manifest": manifest if uploads else stored["manifest"]}
    if check_mode or not uploads:
        return result
    if "image" in uploads:
        if stored["image"] is not None or stored["manifest"] is not None:
            # the store disagrees with this file: make sure the file is right before touching it
            digest = file_sha256(path)
            if digest != ref.sha256:
                raise IntegrityError("%s hashes to %s, not to the SHA-256 in its name: the file is corrupt; the store "
                                     "was left as it is" % (path, digest))
        # unpublish first: the manifest must never describe other bytes than the qcow2's
        if stored["manifest"] is not None:
            store.delete(ref.manifest_file)
        store.put_file(ref, path, size, progress=progress)
    store.put_bytes(ref.manifest_file, manifest_bytes(manifest))
    after = store.stored_image(ref)
    if not after["complete"] or not store.image_ok(ref, size, after):
        raise IntegrityError("after the upload, the store does not hold %s as sent: %s"
                             % (ref, "; ".join(after["problems"]) or "size or SHA-256 metadata differ"))
    result["manifest"] = after["manifest"]
    result["after"] = after
    return result
