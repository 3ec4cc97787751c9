# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What can go wrong in a ``testfleet`` command, and its exit code.

:class:`UsageError` (a wrong command line or config) exits 2, :class:`CommandFailed` (the broker
or a helper program failed) exits 1; ``commands.run`` turns them into a message on stderr.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A wrong command line or config: exit 2."""


class CommandFailed(Exception):
    """The broker or a helper program failed: exit 1."""
