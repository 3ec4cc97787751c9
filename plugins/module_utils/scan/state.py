# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the scanner last learnt about each commit, so that a periodic full rescan reads only
the commits that may need something.

GitHub stays the source of truth; this is a cache of it, kept by the ``scan`` module in the
file ``scan-state.json`` of its ETag cache directory (``etag_cache_dir``). For each (repo, sha)
it holds the commit's statuses as the scanner last read them (``state``, ``description`` and
``updated_at`` of each context: testfleet's description carries the kind, attempt and deadline)
with the time of that read, updated with every status the scanner posts afterwards.

A full repository scan skips a commit (no combined-status request, no action) when the planner
(``scan_plan``), run with the pull request or branch as they are now, the test map as it is
now, the current time and the cached statuses, decides nothing for it -
:func:`settled_review`. That is the case when every context the planner considers is finished
(success, failure, superseded, given up), queued or running within its deadline, or waiting for
an approval; a context without a status, an ``error`` to re-queue or a passed deadline needs a
read. A cache entry is trusted for at most :data:`MAX_AGE` seconds after its read, so even a
change nobody told the scanner about is seen within a day. Scans of one pull request, commit or
branch (webhook events) always read GitHub and refresh the entry. See ``docs/statuses.md``.

The file is written atomically (a private temporary file renamed over it) under an advisory
lock, merging with what other processes wrote meanwhile: per commit the entry changed last
wins, and an entry this process drops (no longer the head of anything) stays dropped only if
nobody changed it since it was loaded. A missing, unreadable or corrupt file is an empty cache;
a bad entry is skipped alone. Deleting the file at any time costs one full read, nothing else.
"""

from __future__ import annotations

import json
import os

try:
    import fcntl
except ImportError:  # pragma: no cover - not a POSIX system: writes are not serialised
    fcntl = None

from ansible_collections.testfleet.infra.plugins.module_utils.scan import plan as scan_plan
from ansible_collections.testfleet.infra.plugins.module_utils.files import write_atomic

STATE_FILE = "scan-state.json"
LOCK_FILE = "scan-state.lock"
FORMAT_VERSION = 1
MAX_AGE = 86400          # seconds a cached read is trusted: every commit is read at least daily
CLOCK_SLACK = 300        # seconds a read may seem to lie in the future (clocks of two processes)
STATUS_FIELDS = ("state", "description", "updated_at")


def _key(repo, sha):
    return "%s %s" % (repo.lower(), sha.lower())


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clean_status(status):
    """The fields of a status the planner reads, or None when it is not shaped like one."""
    if not isinstance(status, dict) or not isinstance(status.get("state"), str):
        return None
    cleaned = {}
    for field in STATUS_FIELDS:
        value = status.get(field)
        if value is not None and not isinstance(value, str):
            return None
        cleaned[field] = value
    return cleaned


def _clean_entry(entry):
    """A valid entry read from the file, or None."""
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("repo", "sha")):
        return None
    if not _number(entry.get("read_at")) or not _number(entry.get("changed_at")):
        return None
    known = entry.get("statuses")
    if not isinstance(known, dict):
        return None
    cleaned = {}
    for context, status in known.items():
        status = _clean_status(status)
        if not isinstance(context, str) or status is None:
            return None
        cleaned[context] = status
    return {"repo": entry["repo"], "sha": entry["sha"], "read_at": float(entry["read_at"]),
            "changed_at": float(entry["changed_at"]), "statuses": cleaned}


def _read_file(path):
    """``(entries by key, problem)``: problem is None, or why the file could not be used."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, "%s: %s" % (exc.__class__.__name__, getattr(exc, "strerror", None) or exc)
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION or not isinstance(data.get("commits"), dict):
        return {}, "not a version %d scan state" % FORMAT_VERSION
    entries = {}
    for entry in data["commits"].values():
        entry = _clean_entry(entry)
        if entry is not None:
            entries[_key(entry["repo"], entry["sha"])] = entry
    return entries, None


class ScanState:
    """The scanner's cache of commit statuses (see the module docstring).

    ``path``: the state file, or None for a cache that lives only as long as the object (the
    scanner then reads everything, as without a cache). Times are epoch seconds.
    """

    def __init__(self, path=None):
        self.path = path
        self.problem = None       # why an existing file was not used, for a warning
        self._entries = {}
        self._loaded = {}         # key -> changed_at when loaded
        self._dirty = set()
        self._dropped = set()

    @classmethod
    def load(cls, directory):
        """The state kept in ``directory`` (None: none kept); never raises for a bad file."""
        state = cls(os.path.join(directory, STATE_FILE) if directory else None)
        if state.path:
            state._entries, state.problem = _read_file(state.path)
            state._loaded = dict((key, entry["changed_at"]) for key, entry in state._entries.items())
        return state

    # --- reading ------------------------------------------------------------------------------
    def statuses(self, repo, sha, now, max_age=MAX_AGE):
        """The statuses of ``sha`` as last known ({context: {state, description, updated_at}}),
        or None when the commit was not read within ``max_age`` seconds before ``now``."""
        entry = self._entries.get(_key(repo, sha))
        if entry is None or not now - max_age < entry["read_at"] <= now + CLOCK_SLACK:
            return None
        return dict((context, dict(status)) for context, status in entry["statuses"].items())

    def __len__(self):
        return len(self._entries)

    # --- learning -----------------------------------------------------------------------------
    def remember_read(self, repo, sha, statuses, now):
        """A fresh read of the commit's statuses ({context: status dict}) at ``now``."""
        known = {}
        for context, status in (statuses or {}).items():
            status = _clean_status(status)
            if isinstance(context, str) and status is not None:
                known[context] = status
        key = _key(repo, sha)
        self._entries[key] = {"repo": repo, "sha": sha, "read_at": float(now), "changed_at": float(now),
                              "statuses": known}
        self._dirty.add(key)
        self._dropped.discard(key)

    def remember_post(self, repo, sha, context, status, now, updated_at=None):
        """A status the scanner posted on ``sha`` at ``now`` ({state, description, ...}).

        Only a commit read before learns it: an entry made of posts alone would not know the
        commit's other contexts."""
        key = _key(repo, sha)
        entry = self._entries.get(key)
        if entry is None:
            return
        entry["statuses"][context] = {"state": status.get("state"), "description": status.get("description"),
                                      "updated_at": updated_at}
        entry["changed_at"] = max(float(now), entry["changed_at"])
        self._dirty.add(key)

    def forget_others(self, repo, keep):
        """Drop the entries of ``repo`` whose sha is not in ``keep`` (the heads a full scan saw)."""
        keep = set(sha.lower() for sha in keep)
        for key, entry in list(self._entries.items()):
            if entry["repo"].lower() == repo.lower() and entry["sha"].lower() not in keep:
                self._drop(key)

    def forget_repos_except(self, repos):
        """Drop the entries of every repository not in ``repos``."""
        repos = set(repo.lower() for repo in repos)
        for key, entry in list(self._entries.items()):
            if entry["repo"].lower() not in repos:
                self._drop(key)

    def _drop(self, key):
        del self._entries[key]
        self._dirty.discard(key)
        self._dropped.add(key)

    # --- writing ------------------------------------------------------------------------------
    def save(self, now):
        """Write what changed (merged with the file as it is now); entries older than
        :data:`MAX_AGE` are left out. Return None, or why the file could not be written."""
        if not self.path or not (self._dirty or self._dropped):
            return None
        directory = os.path.dirname(self.path) or "."
        lock = None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            if fcntl is not None:
                lock = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(lock, fcntl.LOCK_EX)
            merged, dummy = _read_file(self.path)
            for key in self._dirty:
                ours = self._entries[key]
                theirs = merged.get(key)
                if theirs is None or theirs["changed_at"] <= ours["changed_at"]:
                    merged[key] = ours
            for key in self._dropped:
                theirs = merged.get(key)
                if theirs is not None and theirs["changed_at"] <= self._loaded.get(key, theirs["changed_at"]):
                    del merged[key]
            commits = dict((key, entry) for key, entry in sorted(merged.items())
                           if entry["read_at"] > now - MAX_AGE)
            write_atomic(self.path, json.dumps({"version": FORMAT_VERSION, "commits": commits}, separators=(",", ":")),
                         prefix=".tmp-scan-state-")
        except OSError as exc:
            return "cannot write the scan state %s: %s" % (self.path, exc.strerror or exc)
        finally:
            if lock is not None:
                os.close(lock)  # releases the lock
        self._loaded = dict((key, entry["changed_at"]) for key, entry in commits.items())
        self._dirty.clear()
        self._dropped.clear()
        return None


def settled_review(testmap, repo, known, now, pull=None, branch=None):
    """The planner's review of a commit from what the cache knows, when it decides nothing.

    ``known``: :meth:`ScanState.statuses` (None: not known, so not settled). ``pull``: the pull
    request as listed now (its head is the commit), else ``branch``: the branch whose head it
    is. The author's organisations are not asked (they cost requests): an author they would
    allow, on a commit without a testfleet status yet, leads to a read, as it should.
    Returns the :class:`scan_plan.Review` (no actions) or None (the commit must be read).
    """
    if known is None:
        return None
    if pull is not None:
        review = scan_plan.review_pull(testmap, repo, pull, known, now)
    else:
        review = scan_plan.review_ref(testmap, repo, branch, None, known, now)
    return None if review.actions else review
