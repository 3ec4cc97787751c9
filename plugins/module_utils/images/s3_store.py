# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image store in an S3 bucket (any S3-compatible server): ``s3://<bucket>/<prefix>/<file>``.

Uploads never leave a partial object under a final name: an object becomes visible only when
its PutObject or CompleteMultipartUpload succeeds; the bytes are hashed as they are sent and a
multipart upload whose bytes do not hash to the expected SHA-256 is aborted instead of
completed. Each request carries ``Content-MD5``, which S3 servers check, so what is stored is
what was hashed. The SHA-256 is stored as the object metadata ``x-amz-meta-sha256``.

The client comes from ``module_utils/s3.py`` (shared with the log store); ``images/store.py``
has the interface (:class:`ImageStore`) and :func:`open_store`, which imports this module on
first use of an ``s3://`` URL.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re

from ansible_collections.testfleet.infra.plugins.module_utils import s3
from ansible_collections.testfleet.infra.plugins.module_utils.images.naming import ImageError
from ansible_collections.testfleet.infra.plugins.module_utils.images.store import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    DOWNLOAD_CHUNK,
    S3_MAX_PARTS,
    S3_MIN_PART,
    Download,
    HashingReader,
    ImageNotFound,
    ImageStore,
    ImageStoreError,
    MissingLibrary,
    ObjectInfo,
    check_transfer,
)


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
            try:
                client = s3.make_client(
                    endpoint_url=endpoint_url, region=region, access_key=access_key, secret_key=secret_key,
                    profile=profile, ca_file=ca_file, connect_timeout=min(timeout, 30.0), read_timeout=timeout,
                    retries=5, max_pool_connections=max(10, self.concurrency + 2))
            except s3.MissingBoto as exc:
                raise MissingLibrary("boto3", exc.error) from None
            except s3.S3Problem as exc:
                raise ImageStoreError(str(exc)) from None
        self.client = client
        self._secrets = tuple(value for value in (access_key, secret_key) if value)

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

    def _fail(self, what, key, exc):
        if isinstance(exc, ImageError):
            return exc
        hints = {"NoSuchBucket": "create the bucket %s first, e.g. with the role image_store" % self.bucket}
        return ImageStoreError(str(s3.failure(what, self.bucket, key, exc, secrets=self._secrets, hints=hints)))

    def head(self, file_name):
        key = self._key(file_name)
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # botocore raises many unrelated classes
            if s3.is_missing(exc):
                return None
            raise self._fail("HEAD", key, exc)
        modified = answer.get("LastModified")
        return ObjectInfo(answer["ContentLength"], modified.timestamp() if modified else None,
                          (answer.get("Metadata") or {}).get("sha256"))

    def get(self, file_name):
        key = self._key(file_name)
        try:
            return s3.get_bytes(self.client, self.bucket, key)
        except Exception as exc:  # botocore raises many unrelated classes
            raise self._fail("download", key, exc)

    def put_bytes(self, file_name, data, content_type="application/json"):
        key = self._key(file_name)
        try:
            s3.put_bytes(self.client, self.bucket, key, data, content_type=content_type,
                         metadata={"sha256": hashlib.sha256(data).hexdigest()})
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
                reader = HashingReader(handle)
                if size <= self.part_size:
                    data = reader.read(size + 1)
                    check_transfer(reader, ref, size, "upload to %s" % self.describe())
                    s3.put_bytes(self.client, self.bucket, key, data, metadata=metadata)
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
            check_transfer(reader, ref, size, "upload to %s" % self.describe())
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
                                         Body=data, ContentMD5=s3.content_md5(data))
        return number, answer["ETag"], len(data)

    def read(self, file_name, offset=0):
        key = self._key(file_name)
        extra = {"Range": "bytes=%d-" % offset} if offset > 0 else {}
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except Exception as exc:
            if s3.is_missing(exc):
                raise ImageNotFound("%s is not in the store" % self.location(file_name))
            if s3.error_of(exc).get("Code") == "InvalidRange":
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
        try:
            listed = s3.list_objects(self.client, self.bucket, prefix, delimiter="/")
        except Exception as exc:  # botocore raises many unrelated classes
            raise self._fail("listing", prefix, exc)
        return [(key[len(prefix):], ObjectInfo(size, modified, None)) for key, size, modified in listed]

    def delete(self, file_name):
        key = self._key(file_name)
        try:
            s3.delete_object(self.client, self.bucket, key)
        except Exception as exc:  # botocore raises many unrelated classes
            raise self._fail("delete", key, exc)
