# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The image store options of image_publish, image_fetch and image_prune (the image_store
    # family of module_utils/module.py).
    DOCUMENTATION = r"""
options:
  store_url:
    description:
      - The image store, a flat folder holding every image as C(<name>-<sha256>.qcow2) and
        C(<name>-<sha256>.manifest.json).
      - C(s3://bucket/prefix) for an S3 bucket (any S3-compatible server, see O(endpoint_url));
        the bucket must exist.
      - C(file:///srv/testfleet/images), or an absolute path, for a local directory (an NFS
        mount works too); it is created by the first publish.
    type: str
  endpoint_url:
    description:
      - URL of an S3-compatible server (MinIO, Ceph, moto...), e.g. C(https://s3.example.org).
        Without it, AWS S3. Only with an C(s3://) O(store_url).
    type: str
  region:
    description:
      - The S3 region. Defaults to the profile's region, else C(us-east-1).
    type: str
  access_key:
    description:
      - The S3 access key id. Needs O(secret_key) or O(secret_key_file).
      - Without it (and without O(profile)), boto3 looks in its usual places (the environment,
        C(~/.aws/credentials), an instance profile).
    type: str
  secret_key:
    description:
      - The S3 secret access key of O(access_key). Prefer O(secret_key_file) (or ansible-vault),
        which keeps it out of the task.
    type: str
  secret_key_file:
    description:
      - File on the managed host holding the secret access key of O(access_key) (surrounding
        whitespace is ignored). Its content is never returned or logged.
    type: path
  profile:
    description:
      - A profile of the boto3 configuration files (C(~/.aws/config), C(~/.aws/credentials)) on
        the managed host.
    type: str
  ca_file:
    description:
      - CA bundle that signed the S3 server's certificate, when it is not in the system's.
    type: path
  timeout:
    description:
      - Seconds to wait for each answer (and each read of a download) from the S3 server.
    type: float
    default: 60.0
requirements:
  - boto3 (Python library, on the managed host; only for an C(s3://) store)
notes:
  - S3 requests are retried by boto3 (standard mode, 5 attempts). The S3 client sends
    C(Content-MD5) with every upload, which S3-compatible servers check, and leaves the newer
    flexible checksums off, which not all of them support.
"""
