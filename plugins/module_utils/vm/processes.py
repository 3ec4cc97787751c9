# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Processes as /proc shows them: is this very process still alive, and which playbook runs us.

A pid alone can name another process after it is reused, so a process is named by its pid and
its start time (clock ticks since boot, from ``/proc/<pid>/stat``). The VM code keeps both for
QEMU and for the keeper of a detached VM, and asks :func:`process_alive` with both.
"""

from __future__ import annotations

import os


def _stat_fields(pid):
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            data = handle.read()
    except (OSError, TypeError):
        return None
    return data[data.rindex(b")") + 2:].split() if b")" in data else None


def _field(pid, index, convert):
    fields = _stat_fields(pid)
    try:
        return convert(fields[index]) if fields else None
    except (ValueError, IndexError):
        return None


def process_start_time(pid):
    """The start time of a process (clock ticks since boot), or None when it does not exist:
    with the pid it names one process, even after the pid is reused."""
    return _field(pid, 19, int)


def process_alive(pid, start_time=None):
    """True when ``pid`` runs (not a zombie) and, given ``start_time``, is that very process."""
    state = _field(pid, 0, bytes.decode) if pid else None
    if state is None or state in ("Z", "X"):
        return False
    return start_time is None or process_start_time(pid) == start_time


def command_line(pid):
    """The arguments of process ``pid`` (an empty list when it is gone)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def find_playbook_pid(start=None):
    """The ``ansible-playbook`` process this process runs under (the outermost one: Ansible's
    own forks of it run one task each and end), or None."""
    pid = os.getppid() if start is None else start
    found = None
    seen = 0
    while pid and pid > 1 and seen < 64:
        argv = command_line(pid)
        if any(os.path.basename(part) == "ansible-playbook" for part in argv[:2]):
            found = pid
        pid = _field(pid, 1, int)
        seen += 1
    return found
