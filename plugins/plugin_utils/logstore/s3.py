# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The S3 log store (any S3-compatible server): ``s3://<bucket>/<prefix>/<job-id>/<name>``.

boto3 with short timeouts and no retries of its own (the shipper retries). S3 has no append:
each flush uploads the whole log so far (see ``spool.Shipper``).
"""

from __future__ import annotations

import os
from urllib.parse import quote

from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.folder import CONTENT_TYPES, NO_STORE, LogStoreError, check_job_id, check_name

_BOTO = {}


def _boto():
    """boto3 and botocore, imported on first use: the import costs about 0.2 s, which every
    playbook run would pay for the callback even with a local store."""
    if not _BOTO:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise LogStoreError("the S3 log store needs the Python library boto3 (pip install boto3): %s" % exc)
        _BOTO.update(boto3=boto3, config=botocore.config, exceptions=botocore.exceptions)
    return _BOTO


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
            boto = _boto()
            config = boto["config"].Config(
                connect_timeout=connect_timeout, read_timeout=read_timeout,
                retries={"total_max_attempts": 1}, signature_version="s3v4")
            client = boto["boto3"].session.Session().client(
                "s3", endpoint_url=endpoint_url, config=config,
                region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
        self.client = client

    def __repr__(self):
        return "S3Store(s3://%s/%s, endpoint_url=%r)" % (self.bucket, self.prefix, self.endpoint_url)

    def _key(self, job_id, name):
        key = "%s/%s" % (check_job_id(job_id), check_name(name))
        return "%s/%s" % (self.prefix, key) if self.prefix else key

    @staticmethod
    def _client_error(exc):
        """The error code of a botocore ClientError, else None."""
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return response["Error"]
        return None

    def _fail(self, what, key, exc):
        error = self._client_error(exc)
        if error is not None:
            detail = "%s %s" % (error.get("Code", "?"), error.get("Message", ""))
        else:
            detail = "%s: %s" % (type(exc).__name__, exc)
        return LogStoreError("S3 %s of s3://%s/%s failed: %s" % (what, self.bucket, key, detail.strip()))

    def put(self, job_id, name, data):
        key = self._key(job_id, name)
        extra = {"ContentType": CONTENT_TYPES.get(name, "application/octet-stream")}
        if name in NO_STORE:
            extra["CacheControl"] = "no-store"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except Exception as exc:  # botocore raises many unrelated classes; all are retryable here
            raise self._fail("upload", key, exc)

    def get(self, job_id, name):
        key = self._key(job_id, name)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if (self._client_error(exc) or {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._fail("download", key, exc)

    def list(self, job_id):
        top = self._key(job_id, "x")[:-1]
        names = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=top):
                names.extend(item["Key"][len(top):] for item in page.get("Contents", ()))
        except Exception as exc:
            raise self._fail("listing", top, exc)
        return sorted(names)

    def location(self, job_id, name=""):
        if self.public_url:
            return "%s/%s/%s" % (self.public_url, quote(check_job_id(job_id)), quote(name))
        return "s3://%s/%s" % (self.bucket, self._key(job_id, name or "x")[:-1] + name)
