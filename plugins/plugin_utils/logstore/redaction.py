# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secrets out of everything the log store receives: :class:`Redactor`, a job's secrets, and
the job as ``result.json`` shows it."""

from __future__ import annotations

import json
import re

from ansible_collections.testfleet.infra.plugins.module_utils.redact import MASK


class Redactor:
    """Replaces secret values by ``redact.MASK`` in text and in (nested) data.

    Longer secrets are replaced first, so one secret inside another leaves no part behind. The
    JSON-escaped form of each secret is removed too (it is what a dumped result shows).
    """

    def __init__(self, secrets=()):
        values = set()
        for secret in secrets:
            if secret is None:
                continue
            secret = str(secret)
            if secret.strip():
                values.add(secret)
                escaped = json.dumps(secret)[1:-1]
                if escaped != secret:
                    values.add(escaped)
        self.secrets = sorted(values, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in self.secrets)) if self.secrets else None

    def __bool__(self):
        return bool(self.secrets)

    def text(self, value):
        if self._pattern is None or not value:
            return value
        return self._pattern.sub(MASK, value)

    def binary(self, data):
        """``data`` (bytes, e.g. an attachment) with each secret overwritten by as many ``*``.

        The length stays the same, so offsets in binary files stay valid. A secret inside
        compressed or encoded content cannot be found.
        """
        for secret in self.secrets:
            raw = secret.encode("utf-8")
            if raw in data:
                data = data.replace(raw, b"*" * len(raw))
        return data

    def data(self, value):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return dict((self.text(k) if isinstance(k, str) else k, self.data(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


def job_secrets(job):
    """The secret values of a job: the values of ``args.secrets`` (a mapping name -> value)."""
    args = job.get("args") if isinstance(job, dict) else None
    secrets = args.get("secrets") if isinstance(args, dict) else None
    if isinstance(secrets, dict):
        return [str(v) for v in secrets.values() if v is not None]
    return []


def public_job(job):
    """The job as shown in ``result.json``: the values of ``args.secrets`` replaced."""
    if not isinstance(job, dict):
        return job
    shown = dict(job)
    args = shown.get("args")
    if isinstance(args, dict) and isinstance(args.get("secrets"), dict):
        shown["args"] = dict(args, secrets=dict((k, MASK) for k in args["secrets"]))
    return shown
