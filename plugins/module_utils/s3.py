# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""S3 for every store of testfleet (images, logs): one client maker, one error describer.

Any S3-compatible server works (``endpoint_url``); boto3 is imported on first use (about
0.2 s), so code that never touches S3 neither needs nor pays for it.

The interface (what a store needs; each store keeps its own key layout and its own errors):

- :func:`boto`: the modules ``boto3``, ``botocore.config``, ``botocore.exceptions`` as a dict
  (keys ``boto3``, ``config``, ``exceptions``); raises :class:`MissingBoto` without them.
- :func:`make_client` ``(endpoint_url=None, region=None, access_key=None, secret_key=None,
  profile=None, ca_file=None, connect_timeout=5.0, read_timeout=60.0, retries=5,
  max_pool_connections=10, addressing_style=None)``: a boto3 S3 client, SigV4. ``retries`` is
  how many times botocore retries a request after the first attempt (0: never, for a caller
  that retries itself, like the log shipper). ``addressing_style`` None means ``path`` when
  ``endpoint_url`` is given (what S3-compatible servers expect), boto's default otherwise.
  Flexible checksums are sent only when required; callers send ``Content-MD5`` instead, which
  all S3 servers check. Region: ``region``, else the session's (``AWS_DEFAULT_REGION``, the
  profile), else ``us-east-1``. Credentials: the keys, or ``profile``, or boto's usual chain.
  Raises :class:`S3Problem` when the client cannot be made.
- :func:`error_of` ``(exc)``: the ``{"Code", "Message"}`` of a botocore ClientError, or ``{}``;
  :func:`is_missing` ``(exc)``: whether it says that the key is not there (404, NoSuchKey).
- :func:`describe_error` ``(exc, secrets=())``: one line for an operator, ``Code Message`` for
  a server's answer, ``Type: text`` otherwise; never a secret: any of ``secrets`` is replaced
  by ``redact.MASK`` and URL query strings (pre-signed signatures) are dropped.
- :func:`failure` ``(what, bucket, key, exc, secrets=(), hints=None)``: the :class:`S3Problem`
  ``S3 <what> of s3://bucket/key failed: <description>``, with ``hints[code]`` appended for a
  server error code; its ``code`` attribute is the server's code (or None). Stores re-raise it
  as their own error (``ImageStoreError(str(problem))``, ``LogStoreError(...)``).
- The small operations, each raising what botocore raises (callers pass it to
  :func:`failure` with the words of their own store):
  :func:`content_md5` ``(data)``; :func:`put_bytes` ``(client, bucket, key, data,
  content_type="application/octet-stream", metadata=None, cache_control=None)`` (with
  ``Content-MD5``); :func:`get_bytes` ``(client, bucket, key)`` (None when missing);
  :func:`list_objects` ``(client, bucket, prefix, delimiter=None)``, a list of
  ``(key, size, modified_epoch)``; :func:`delete_object` ``(client, bucket, key)`` (a missing
  key is no error).
- :func:`bucket_and_prefix` ``(parts)``: ``(bucket, prefix)`` of a split ``s3://`` URL, or
  None when it names no bucket.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import unquote

from ansible_collections.testfleet.infra.plugins.module_utils.redact import hide

MISSING_CODES = ("404", "NoSuchKey", "NotFound")
_QUERY_RE = re.compile(r"(https?://[^\s?'\"]*)\?[^\s'\"]*")

_BOTO = {}


class S3Problem(Exception):
    """An S3 failure worded for the operator; ``code`` is the server's error code or None."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class MissingBoto(S3Problem):
    """boto3 or botocore is not installed (``library`` names the missing one)."""

    def __init__(self, error):
        super().__init__("S3 needs the Python library boto3 (pip install boto3): %s" % error)
        self.library = "boto3"
        self.error = error


def boto():
    """The boto3 modules, imported on first use; raise :class:`MissingBoto` without them."""
    if not _BOTO:
        try:
            import boto3
            import botocore.config
            import botocore.exceptions
        except ImportError as exc:
            raise MissingBoto(exc) from None
        _BOTO.update(boto3=boto3, config=botocore.config, exceptions=botocore.exceptions)
    return _BOTO


def make_client(endpoint_url=None, region=None, access_key=None, secret_key=None, profile=None, ca_file=None,
                connect_timeout=5.0, read_timeout=60.0, retries=5, max_pool_connections=10,
                addressing_style=None):
    """A boto3 S3 client (see the module's docstring); raise S3Problem when it cannot be made."""
    modules = boto()
    if addressing_style is None and endpoint_url:
        addressing_style = "path"
    config = modules["config"].Config(
        signature_version="s3v4", connect_timeout=connect_timeout, read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": int(retries) + 1},
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
        s3={"addressing_style": addressing_style} if addressing_style else None)
    try:
        session = modules["boto3"].session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, profile_name=profile)
        return session.client("s3", endpoint_url=endpoint_url, config=config,
                              region_name=region or session.region_name or "us-east-1",
                              verify=ca_file if ca_file else None)
    except modules["exceptions"].BotoCoreError as exc:
        raise S3Problem("cannot set up the S3 client: %s"
                        % describe_error(exc, secrets=(access_key, secret_key))) from None


def error_of(exc):
    """The ``Error`` dict (``Code``, ``Message``) of a botocore ClientError, else ``{}``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        return response["Error"]
    return {}


def is_missing(exc):
    """Whether ``exc`` is the server saying that the key (or object) is not there."""
    return str(error_of(exc).get("Code")) in MISSING_CODES


def describe_error(exc, secrets=()):
    """``exc`` in one line for an operator, with no secret in it (see the module's docstring)."""
    error = error_of(exc)
    if error:
        text = "%s %s" % (error.get("Code", "?"), error.get("Message", ""))
    else:
        text = "%s: %s" % (type(exc).__name__, exc)
    return hide(_QUERY_RE.sub(r"\1", text), secrets).strip()


def failure(what, bucket, key, exc, secrets=(), hints=None):
    """The :class:`S3Problem` for the failed ``what`` ("upload", "download"...) of ``key``."""
    code = error_of(exc).get("Code")
    text = "S3 %s of s3://%s/%s failed: %s" % (what, bucket, key, describe_error(exc, secrets))
    if code and hints and code in hints:
        text += " (%s)" % hints[code]
    return S3Problem(text, code=str(code) if code else None)


def content_md5(data):
    """The ``Content-MD5`` header value of ``data`` (which S3 servers check)."""
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")  # nosec - an integrity check


def put_bytes(client, bucket, key, data, content_type="application/octet-stream", metadata=None,
              cache_control=None):
    """Store ``data`` as ``key`` in one PutObject carrying ``Content-MD5``."""
    extra = {"ContentType": content_type}
    if metadata:
        extra["Metadata"] = metadata
    if cache_control:
        extra["CacheControl"] = cache_control
    client.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=content_md5(data), **extra)


def get_bytes(client, bucket, key):
    """The bytes of ``key``, or None when there is no such key."""
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # botocore raises many unrelated classes
        if is_missing(exc):
            return None
        raise


def list_objects(client, bucket, prefix, delimiter=None):
    """``[(key, size, modified_epoch)]`` of the keys under ``prefix`` (with ``delimiter``: not
    those in deeper "folders")."""
    extra = {"Delimiter": delimiter} if delimiter else {}
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **extra):
        for item in page.get("Contents", ()):
            modified = item.get("LastModified")
            found.append((item["Key"], item["Size"], modified.timestamp() if modified else None))
    return found


def delete_object(client, bucket, key):
    """Delete ``key``; a key that is not there is no error."""
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore raises many unrelated classes
        if not is_missing(exc):
            raise


def bucket_and_prefix(parts):
    """``(bucket, prefix)`` of the split ``s3://bucket/prefix`` URL ``parts``; None without a
    bucket. The prefix has no slash at either end."""
    if not parts.netloc:
        return None
    return parts.netloc, unquote(parts.path).strip("/")
