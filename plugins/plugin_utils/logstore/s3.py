# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The S3 log store (any S3-compatible server): ``s3://<bucket>/<prefix>/<job-id>/<name>``.

The client, the requests and the wording of failures are ``module_utils/s3.py``'s, shared with
the image store. The log store asks it for short timeouts and no retries of botocore's own
(``retries=0``): the shipper (``spool.Shipper``) retries with backoff behind a circuit breaker
and keeps in its spool what it cannot send, and its final flush has a deadline that botocore's
retries (each attempt with its own timeouts) would overrun, holding up the end of the play.
S3 has no append: each flush uploads the whole log so far.
"""

from __future__ import annotations

from ansible_collections.testfleet.infra.plugins.module_utils import s3
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.folder import (
    CONTENT_TYPES, NO_STORE, LogStoreError, check_job_id, check_name, public_location)


class S3Store:
    """An S3 bucket (any S3-compatible server): ``s3://<bucket>/<prefix>/<job-id>/<name>``."""

    supports_append = False

    def __init__(self, bucket, prefix="", endpoint_url=None, public_url=None, region=None,
                 connect_timeout=5.0, read_timeout=15.0, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.public_url = public_url.rstrip("/") if public_url else None
        if client is None:
            try:
                client = s3.make_client(endpoint_url=endpoint_url, region=region, connect_timeout=connect_timeout,
                                        read_timeout=read_timeout, retries=0)
            except s3.MissingBoto as exc:
                raise LogStoreError("the S3 log store needs the Python library boto3 (pip install boto3): %s"
                                    % exc.error) from None
            except s3.S3Problem as exc:
                raise LogStoreError(str(exc)) from None
        self.client = client

    def __repr__(self):
        return "S3Store(s3://%s/%s, endpoint_url=%r)" % (self.bucket, self.prefix, self.endpoint_url)

    def _key(self, job_id, name):
        key = "%s/%s" % (check_job_id(job_id), check_name(name))
        return "%s/%s" % (self.prefix, key) if self.prefix else key

    def _fail(self, what, key, exc):
        return LogStoreError(str(s3.failure(what, self.bucket, key, exc)))

    def put(self, job_id, name, data):
        key = self._key(job_id, name)
        try:
            s3.put_bytes(self.client, self.bucket, key, data,
                         content_type=CONTENT_TYPES.get(name, "application/octet-stream"),
                         cache_control="no-store" if name in NO_STORE else None)
        except Exception as exc:  # botocore raises many unrelated classes; all are retryable here
            raise self._fail("upload", key, exc)

    def get(self, job_id, name):
        key = self._key(job_id, name)
        try:
            return s3.get_bytes(self.client, self.bucket, key)
        except Exception as exc:  # botocore raises many unrelated classes
            raise self._fail("download", key, exc)

    def list(self, job_id):
        top = self._key(job_id, "x")[:-1]
        try:
            listed = s3.list_objects(self.client, self.bucket, top)
        except Exception as exc:  # botocore raises many unrelated classes
            raise self._fail("listing", top, exc)
        return sorted(key[len(top):] for key, dummy, dummy in listed)

    def location(self, job_id, name=""):
        if self.public_url:
            return public_location(self.public_url, job_id, name)
        return "s3://%s/%s" % (self.bucket, self._key(job_id, name) if name else self._key(job_id, "x")[:-1])
