# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The jobs the operator CLI publishes: full scans of repositories and retests of pull requests.

Both are ``scan`` jobs (``jobs.make_job``) for the events queue; their ids follow the one job-id
rule (``jobs.job_id``): a prefix, the time, the repository and a random tail, so two runs never
collide. :func:`configured_repos` lists the repositories of the config's test map.
"""

from __future__ import annotations

import datetime
import getpass
import importlib
import re
import uuid

from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.programs.cli.errors import UsageError


def _stamp(now):
    return now.strftime("%Y%m%dT%H%M%SZ")


def _job_id(prefix, repo, now):
    return jobs.job_id(prefix, "%s-%s" % (_stamp(now), repo), "-%s" % uuid.uuid4().hex[:8])


def operator_user():
    """``operator:<login name>``: the user of an operator's command (never a GitHub login)."""
    try:
        name = getpass.getuser()
    except Exception:  # no login name (a container without passwd entry)
        name = "unknown"
    return "operator:" + (re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "unknown")


def scan_job(repo, trigger, now=None, fresh=False, rebuild=False):
    """A full scan of ``repo`` (its open pull requests and branches).

    ``fresh`` reads every commit (no scan state); ``rebuild`` also publishes again the jobs of
    contexts that are ``queued`` (after a broker lost its queues).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    scan_args = {"trigger": trigger}
    if rebuild:
        scan_args["rebuild"] = True
    elif fresh:
        scan_args["fresh"] = True
    return jobs.make_job("scan", _job_id("scan-" + trigger, repo, now), repo=repo, args=scan_args)


def retest_job(repo, pull, contexts, user=None, now=None):
    """A scan of pull request ``pull`` with a retest command of the operator."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    command = {"command": "retest", "contexts": list(contexts), "user": user or operator_user(),
               "created_at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
    return jobs.make_job("scan", _job_id("retest", "%s-%d" % (repo, pull), now), repo=repo, pull=pull,
                         args={"trigger": "operator", "commands": [command]})


def configured_repos(cfg):
    """Every repository of the config's test map (``testmap.py``)."""
    if not cfg.testmap:
        raise UsageError("%s names no testmap: give the repositories (testfleet scan OWNER/NAME ...) or set the "
                         "top-level key testmap" % cfg.path)
    try:
        testmap_lib = importlib.import_module("ansible_collections.testfleet.infra.plugins.module_utils.testmap")
    except ImportError as exc:
        raise UsageError("cannot read the test map: %s" % exc)
    try:
        repos = list(testmap_lib.load_testmap(cfg.testmap).repos)
    except (ValueError, OSError) as exc:  # TestMapError is a ValueError
        raise UsageError(str(exc))
    if not repos:
        raise UsageError("the test map %s names no repository" % cfg.testmap)
    return repos
