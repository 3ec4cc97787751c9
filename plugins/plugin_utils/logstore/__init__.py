# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The log store: one folder per job, in S3 (any S3-compatible server) or a local directory.

A job's folder ``<job-id>/`` holds:

``log``          plain text, growing while the job runs
``log.html``     a static viewer (``viewer.html``) that follows ``log`` live and shows the
                 outcome from ``result.json`` when the job is done
``result.json``  the machine-readable outcome (its schema and outcome words: ``job_run``)
``attachments/`` what the job left in its attachments directory

Who writes it: the callback plugin ``testfleet.infra.job_log`` keeps a local copy of the folder
(the *spool*, :class:`JobSpool`) and a background :class:`Shipper` copies it to the store every
few seconds or every few KB. ``job_run.finish`` stores the folder when the job ended (from the
worker, or from the callback when the job ran by hand), ``result.json`` last. Secrets are
removed before anything is written to the spool (:class:`Redactor`).

The package, one concern a module (import the names from here):

==============  =========================================================================
``folder``      file names, limits, errors, the job id and file name checks, public URLs
``stores``      :class:`LocalStore` and :func:`open_store` (picks a backend by URL)
``s3``          :class:`S3Store` (on ``module_utils/s3.py``, the image store's S3 too)
``redaction``   :class:`Redactor`, :func:`job_secrets`, :func:`public_job`
``spool``       :class:`JobSpool`, :class:`Shipper`, :func:`upload_folder`
``viewer``      ``log.html``, loaded from ``viewer.html``
==============  =========================================================================
"""

from __future__ import annotations

from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.folder import (
    ATTACHMENTS, CONTENT_TYPES, DEFAULT_URL, LOG, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENT_FILES, MAX_LOG_BYTES,
    NO_STORE, RESULT, VIEWER, LogStoreError, ShortFile, check_job_id, check_name, public_location, result_bytes)
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.redaction import (
    Redactor, job_secrets, public_job)
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.s3 import S3Store
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.stores import LocalStore, open_store
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.viewer import viewer_bytes, viewer_html
from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore.spool import (
    S3_RESEND_BYTES_PER_S, JobSpool, Shipper, upload_folder)

__all__ = [
    "ATTACHMENTS", "CONTENT_TYPES", "DEFAULT_URL", "LOG", "MAX_ATTACHMENT_BYTES", "MAX_ATTACHMENT_FILES", "MAX_LOG_BYTES",
    "NO_STORE", "RESULT", "VIEWER", "LogStoreError", "ShortFile", "check_job_id", "check_name", "public_location",
    "result_bytes",
    "Redactor", "job_secrets", "public_job", "S3Store", "LocalStore", "open_store",
    "viewer_bytes", "viewer_html", "S3_RESEND_BYTES_PER_S", "JobSpool", "Shipper", "upload_folder",
]
