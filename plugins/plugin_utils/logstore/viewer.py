# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The viewer ``log.html``: one static page for every job, stored next to its log.

The page is the file ``viewer.html`` beside this module (it ships in the collection). It uses
no external resources. It polls ``log`` (a Range request from the last offset; a server that
ignores Range answers 200 with the whole file) and ``result.json`` until the outcome is final.
"""

from __future__ import annotations

import os

VIEWER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "viewer.html")

_CACHE = {}


def viewer_bytes():
    """The content of ``log.html`` (read once per process)."""
    if "html" not in _CACHE:
        with open(VIEWER_FILE, "rb") as handle:
            _CACHE["html"] = handle.read()
    return _CACHE["html"]


def viewer_html():
    """The viewer page as text."""
    return viewer_bytes().decode("utf-8")
