# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM images: their names, their manifests and the image store (S3 or a local directory).

Naming (content-addressed)
    An image is the pair ``<name>-<sha256>.qcow2`` and ``<name>-<sha256>.manifest.json``:
    ``<sha256>`` is the SHA-256 (64 lowercase hex digits) of the qcow2 file's bytes and
    ``<name>`` matches :data:`NAME_RE` (``debian-12``, ``fedora-41.minimal``...). The manifest is
    a JSON object with at least the keys of :data:`MANIFEST_KEYS`.

The store
    A flat folder: both files of every image side by side, in an S3 bucket (any S3-compatible
    server, ``s3://bucket/prefix``, with ``endpoint_url``) or in a local directory
    (``file:///srv/images`` or a plain path). The manifest is written last and removed first:
    an image is *published* when its manifest is there. Nothing else in the folder is ever
    touched, except the directory store's own ``.incoming/`` (uploads in progress).

    Uploads never leave a partial object under a final name. S3: an object becomes visible
    only when its PutObject or CompleteMultipartUpload succeeds; the bytes are hashed as they are
    sent and a multipart upload whose bytes do not hash to the expected SHA-256 is aborted
    instead of completed, so nothing appears. Each request carries ``Content-MD5``, which S3
    servers check, so what is stored is what was hashed. The SHA-256 is stored as the object
    metadata ``x-amz-meta-sha256`` and read back after the upload with the size. Directory: the
    bytes are copied (and hashed) into ``.incoming/``, fsynced and renamed into place.

boto3 is imported on first use of an S3 store (it costs about 0.2 s), so code that only names
images, or uses a directory store, neither needs nor pays for it.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import datetime
import errno
import hashlib
import json
import os
import re
from urllib.parse import unquote, urlsplit

from ansible_collections.testfleet.infra.plugins.module_utils.files import atomic_file, remove_quietly

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMAGE_SUFFIX = ".qcow2"
MANIFEST_SUFFIX = ".manifest.json"
_FILE_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,63})-(?P<sha256>[0-9a-f]{64})"
                      r"(?P<suffix>\.qcow2|\.manifest\.json)$")
_REF_RE = re.compile(r"^(?:(?P<name>[a-z0-9][a-z0-9._-]{0,63})-)?(?P<sha256>[0-9a-f]{64})(?:\.qcow2)?$")

# What every manifest has; vm_image writes them, the store checks them.
MANIFEST_KEYS = ("name", "sha256", "size", "recipe_sha256", "base", "packages", "built_at")

CHUNK = 1024 * 1024
DOWNLOAD_CHUNK = 64 * 1024   # what a download writes at a time (and keeps when it breaks)
MIB = 1024 * 1024
S3_MIN_PART = 5 * MIB        # S3's smallest part (all but the last)
S3_MAX_PARTS = 10000
DEFAULT_PART_SIZE = 16 * MIB
DEFAULT_CONCURRENCY = 4
INCOMING = ".incoming"

_BOTO = {}


class ImageError(Exception):
    """Base class of every error of this module; ``str()`` says what to fix."""


class ImageNameError(ImageError, ValueError):
    """A name, SHA-256, file name or image reference does not follow the naming rules."""


class ManifestError(ImageError, ValueError):
    """A manifest is not valid JSON, misses a key, or does not describe the image it goes with."""


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


ObjectInfo = collections.namedtuple("ObjectInfo", "size modified sha256")
ObjectInfo.__doc__ = """A stored file: size in bytes, last change (seconds since the epoch), and
the SHA-256 the store keeps as metadata (None when the backend has none, or it was not set)."""


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


# --- the store ----------------------------------------------------------------------------------

def _boto():
    if not _BOTO:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise MissingLibrary("boto3", exc)
        _BOTO.update(boto3=boto3, config=botocore.config, exceptions=botocore.exceptions)
    return _BOTO


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


class _HashingReader:
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


def _check_transfer(reader, ref, size, where):
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
                reader = _HashingReader(source)
                while True:
                    data = reader.read(CHUNK)
                    if not data:
                        break
                    handle.write(data)
                    if progress is not None:
                        progress(reader.count, size)
                _check_transfer(reader, ref, size, "copy to %s" % self.root)
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


class S3Store(ImageStore):
    """An S3 bucket (any S3-compatible server): ``s3://<bucket>/<prefix>/<file>``."""

    kind = "s3"

    def __init__(self, bucket, prefix="", endpoint_url=None, region=None, access_key=None, secret_key=None,
                 profile=None, ca_file=None, timeout=60.0, part_size=DEFAULT_PART_SIZE,
                 concurrency=DEFAULT_CONCURRENCY, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.part_size = max(int(part_size), S3_MIN_PART)
        self.concurrency = max(1, int(concurrency))
        if client is None:
            boto = _boto()
            config = boto["config"].Config(
                signature_version="s3v4", connect_timeout=min(timeout, 30.0), read_timeout=timeout,
                retries={"mode": "standard", "max_attempts": 5},
                max_pool_connections=max(10, self.concurrency + 2),
                # S3-compatible servers differ in the newer flexible checksums; Content-MD5 (below)
                # is checked by all of them.
                request_checksum_calculation="when_required", response_checksum_validation="when_required",
                s3={"addressing_style": "path"} if endpoint_url else None)
            try:
                session = boto["boto3"].session.Session(
                    aws_access_key_id=access_key, aws_secret_access_key=secret_key, profile_name=profile)
                client = session.client("s3", endpoint_url=endpoint_url, config=config,
                                        region_name=region or session.region_name or "us-east-1",
                                        verify=ca_file if ca_file else None)
            except boto["exceptions"].BotoCoreError as exc:
                raise ImageStoreError("cannot set up the S3 client: %s" % exc)
        self.client = client

    def __repr__(self):
        return "S3Store(%s, endpoint_url=%r)" % (self.describe(), self.endpoint_url)

    def describe(self):
        return "s3://%s/%s" % (self.bucket, self.prefix) if self.prefix else "s3://%s" % self.bucket

    def _key(self, file_name):
        if "/" in file_name or file_name in ("", ".", ".."):
            raise ImageStoreError("invalid file name %r" % (file_name,))
        return "%s/%s" % (self.prefix, file_name) if self.prefix else file_name

    def location(self, file_name):
        return "s3://%s/%s" % (self.bucket, self._key(file_name))

    @staticmethod
    def _error(exc):
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return response["Error"]
        return {}

    def _missing(self, exc):
        return str(self._error(exc).get("Code")) in ("404", "NoSuchKey", "NotFound")

    def _fail(self, what, key, exc):
        error = self._error(exc)
        if error:
            code = error.get("Code", "?")
            detail = "%s %s" % (code, error.get("Message", ""))
            if code == "NoSuchBucket":
                detail += " (create the bucket %s first, e.g. with the role image_store)" % self.bucket
        else:
            detail = "%s: %s" % (type(exc).__name__, exc)
        if isinstance(exc, ImageError):
            return exc
        return ImageStoreError("S3 %s of s3://%s/%s failed: %s" % (what, self.bucket, key, detail.strip()))

    def head(self, file_name):
        key = self._key(file_name)
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # botocore raises many unrelated classes
            if self._missing(exc):
                return None
            raise self._fail("HEAD", key, exc)
        modified = answer.get("LastModified")
        return ObjectInfo(answer["ContentLength"], modified.timestamp() if modified else None,
                          (answer.get("Metadata") or {}).get("sha256"))

    def get(self, file_name):
        key = self._key(file_name)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if self._missing(exc):
                return None
            raise self._fail("download", key, exc)

    @staticmethod
    def _md5(data):
        return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")

    def put_bytes(self, file_name, data, content_type="application/json"):
        key = self._key(file_name)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=self._md5(data),
                                   ContentType=content_type,
                                   Metadata={"sha256": hashlib.sha256(data).hexdigest()})
        except Exception as exc:
            raise self._fail("upload", key, exc)

    def put_file(self, ref, path, size, progress=None):
        """Upload the qcow2 at ``path`` as ``ref.image_file`` with the metadata ``sha256``.

        Up to one part size: read, hashed and checked, then one PutObject. Larger: a multipart
        upload, parts read in order (and hashed) and sent by ``concurrency`` threads; completed
        only when all the bytes hash to ``ref.sha256``, aborted otherwise.
        """
        key = self._key(ref.image_file)
        metadata = {"sha256": ref.sha256, "testfleet-image": ref.name}
        try:
            with open(path, "rb") as handle:
                reader = _HashingReader(handle)
                if size <= self.part_size:
                    data = reader.read(size + 1)
                    _check_transfer(reader, ref, size, "upload to %s" % self.describe())
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=self._md5(data),
                                           ContentType="application/octet-stream", Metadata=metadata)
                    if progress is not None:
                        progress(size, size)
                    return
                self._multipart(key, reader, ref, size, metadata, progress)
        except OSError as exc:
            raise ImageStoreError("cannot read %s: %s" % (path, exc.strerror or exc))
        except Exception as exc:
            raise self._fail("upload", key, exc)

    def _part_size(self, size):
        part = self.part_size
        while (size + part - 1) // part > S3_MAX_PARTS:
            part *= 2
        return part

    def _multipart(self, key, reader, ref, size, metadata, progress):
        part_size = self._part_size(size)
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, Metadata=metadata, ContentType="application/octet-stream")["UploadId"]
        try:
            etags = {}
            sent = [0]

            def collect(done):
                for future in done:
                    number, etag, length = future.result()
                    etags[number] = etag
                    sent[0] += length
                    if progress is not None:
                        progress(sent[0], size)

            with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                pending = set()
                number = 0
                while True:
                    data = reader.read(part_size)
                    if not data:
                        break
                    number += 1
                    pending.add(pool.submit(self._upload_part, key, upload_id, number, data))
                    # at most `concurrency` parts in memory
                    while len(pending) >= self.concurrency:
                        done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                        collect(done)
                done, pending = concurrent.futures.wait(pending)
                collect(done)
            _check_transfer(reader, ref, size, "upload to %s" % self.describe())
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]})
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # the bucket's lifecycle rule for incomplete uploads cleans up
            raise

    def _upload_part(self, key, upload_id, number, data):
        answer = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                         Body=data, ContentMD5=self._md5(data))
        return number, answer["ETag"], len(data)

    def read(self, file_name, offset=0):
        key = self._key(file_name)
        extra = {"Range": "bytes=%d-" % offset} if offset > 0 else {}
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except Exception as exc:
            if self._missing(exc):
                raise ImageNotFound("%s is not in the store" % self.location(file_name))
            if self._error(exc).get("Code") == "InvalidRange":
                # the partial file is as long as the object (or longer): start again
                return self.read(file_name, 0)
            raise self._fail("download", key, exc)
        start, total = 0, answer["ContentLength"]
        content_range = answer.get("ContentRange")
        if content_range:  # "bytes 600-999/1000"
            match = re.match(r"bytes (\d+)-\d+/(\d+)$", content_range)
            if not match:
                answer["Body"].close()
                raise ImageStoreError("S3 download of %s: unexpected Content-Range %r" % (key, content_range))
            start, total = int(match.group(1)), int(match.group(2))
        body = answer["Body"]
        return Download(start, total, body.iter_chunks(DOWNLOAD_CHUNK), body.close)

    def list_files(self):
        prefix = self.prefix + "/" if self.prefix else ""
        found = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for item in page.get("Contents", ()):
                    found.append((item["Key"][len(prefix):],
                                  ObjectInfo(item["Size"], item["LastModified"].timestamp(), None)))
        except Exception as exc:
            raise self._fail("listing", prefix, exc)
        return found

    def delete(self, file_name):
        key = self._key(file_name)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if not self._missing(exc):
                raise self._fail("delete", key, exc)


def open_store(url, endpoint_url=None, region=None, access_key=None, secret_key=None, profile=None, ca_file=None,
               timeout=60.0, part_size=DEFAULT_PART_SIZE, concurrency=DEFAULT_CONCURRENCY, client=None):
    """The store at ``url``: ``s3://bucket[/prefix]``, ``file:///dir`` or a plain directory path."""
    parts = urlsplit(url or "")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ImageStoreError("image store %s names no bucket (s3://bucket/prefix)" % url)
        return S3Store(parts.netloc, unquote(parts.path), endpoint_url=endpoint_url, region=region,
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
