# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How testfleet shows a secret it must not show: :data:`MASK` in its place.

One mask for everything a person or a machine reads: error messages (S3, GitHub, AMQP URLs),
module results, logs and the log store (a job's log, its ``result.json``). Code that knows the
secrets hides them with :func:`hide`; the log store's ``Redactor`` (``plugin_utils``), which
hides them in every line of a job's log, compiles them once and puts the same mask in their place.
"""

from __future__ import annotations

MASK = "********"


def hide(text, secrets):
    """``text`` with each of ``secrets`` replaced by :data:`MASK`.

    Empty secrets and None are skipped; longer secrets go first, so a secret inside another
    leaves no part of the longer one behind.
    """
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
