# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GitHub webhook events testfleet scans for, defined once.

Two programs must agree on this list and live apart: ``testfleet-webhook`` queues only the
deliveries its event filter lets through (``webhook.events`` in the config, whose default
:data:`~.config.DEFAULT_EVENTS` is :func:`default_filter`), and the worker maps each queued
delivery to a scan job with the handler of its event (``plugins/plugin_utils/events.py``,
``HANDLERS``). An event missing here never reaches its handler; a handler missing there leaves
a queued event unscanned. ``tests/unit/plugins/plugin_utils/test_events.py`` checks that the two
agree.

:data:`SCANNED` maps an event to the actions that can call for a scan, or None for every
action (an event without actions, or one whose payload decides, like a status' state).
:data:`ACKNOWLEDGED` are events the webhook queues although nothing is scanned for them
(``ping``: the worker logs GitHub's check of the hook).
"""

from __future__ import annotations

PULL_REQUEST_ACTIONS = ("opened", "synchronize", "reopened", "closed", "ready_for_review", "labeled")
ISSUE_COMMENT_ACTIONS = ("created",)

SCANNED = {
    "pull_request": PULL_REQUEST_ACTIONS,
    "push": None,
    "issue_comment": ISSUE_COMMENT_ACTIONS,
    "status": None,
}
ACKNOWLEDGED = {
    "ping": None,
}


def default_filter():
    """The webhook's default event filter: event -> list of actions, or None for all (a new
    dict each call, in the shape of the config key ``webhook.events``)."""
    events = dict(SCANNED, **ACKNOWLEDGED)
    return {event: None if actions is None else list(actions) for event, actions in events.items()}
