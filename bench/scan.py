# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of the scanner's GitHub budget: a full scan of a repository with many open PRs.

    .venv/bin/python bench/scan.py [--url URL] [--password-file FILE] [--prs 200] [--contexts 5]

Self-contained: it starts the fake GitHub of the tests (tests/fake_github/) on 127.0.0.1 with
one repository of ``--prs`` open pull requests (a few pages of the pulls list), writes a test
map with ``--contexts`` contexts on ``main``, declares a queue of its own on the running broker
(``bench-scan-<id>.*``, deleted at the end), and runs the ``testfleet.infra.scan`` module (in
this process, as Ansible would run it) three times: a first full scan, which queues every
context of every PR (posts ``queued``, publishes one job each); an immediate rescan with
nothing changed; and a rescan after one PR moved to a new head.

Figures (GitHub's rate limit counts every answer that is not a 304):

``first_scan_counted``   counted reads of the first scan (target: at most 1.1 per PR)
``first_scan_writes``    status posts of the first scan (one per queued context; reported apart)
``rescan_counted``       counted requests of the unchanged rescan, writes included (target: <= 5):
                         the scan state (scan-state.json next to the ETag cache) shows every
                         commit queued within its deadline, so none is read; the pulls list and
                         the branch head are conditional requests answered 304
``rescan_cached``        commits the rescan did not read because of the scan state
``first_scan_s``, ``rescan_s``     wall time of each
``moved_counted``, ``moved_writes``, ``moved_s``
                         the rescan after one PR's head moved: what a change costs
``jobs_published``       messages on the bench queue after the scans (must be
                         ``jobs_expected`` = first_scan_queued + moved_queued: one per context of
                         each head, and new ones for the PR that moved)

The last line is one JSON object with all of them plus ``prs``, ``contexts`` and the targets met.
"""

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import uuid

from collection_path import ROOT, import_collection

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
REPO = "bench-org/project"


def say(text):
    print("bench/scan: %s" % text, file=sys.stderr, flush=True)


def load_fake_github():
    package = os.path.join(ROOT, "tests", "fake_github")
    spec = importlib.util.spec_from_file_location("fake_github", os.path.join(package, "__init__.py"), submodule_search_locations=[package])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_github"] = module
    spec.loader.exec_module(module)
    return module


def run_scan(args):
    """Run the scan module in-process with ``args``; return its result (what Ansible would get)."""
    from ansible.module_utils.testing import patch_module_args
    module = importlib.import_module("ansible_collections.testfleet.infra.plugins.modules.scan")
    out = io.StringIO()
    with patch_module_args(dict(args, _ansible_module_name="testfleet.infra.scan")), contextlib.redirect_stdout(out):
        try:
            module.main()
        except SystemExit:
            pass
    result = json.loads(out.getvalue())
    if result.get("failed"):
        raise SystemExit("bench/scan: the scan failed: %s" % result.get("msg"))
    return result


def measured(github, args):
    """Run one scan; return (result, counted reads, writes, seconds)."""
    first = len(github.requests)
    started = time.perf_counter()
    result = run_scan(args)
    seconds = time.perf_counter() - started
    requests = github.requests[first:]
    reads = sum(1 for r in requests if r["counted"] and r["method"] == "GET")
    writes = sum(1 for r in requests if r["counted"] and r["method"] != "GET")
    return result, reads, writes, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--url", default=os.environ.get("TESTFLEET_AMQP_URL", DEFAULT_URL))
    parser.add_argument("--password-file", default=os.environ.get("TESTFLEET_AMQP_PASSWORD_FILE"))
    parser.add_argument("--prs", type=int, default=200)
    parser.add_argument("--contexts", type=int, default=5)
    options = parser.parse_args()

    import_collection()
    from ansible_collections.testfleet.infra.plugins.module_utils import amqp
    from ansible_collections.testfleet.infra.plugins.module_utils.topology import ensure_queue, expand

    fake = load_fake_github()
    prefix = "bench-scan-%s." % uuid.uuid4().hex[:8]
    description = {"exchange": prefix + "jobs", "dead_letter_exchange": prefix + "dlx",
                   "dead_letter_queue": prefix + "dead-letter", "queues": [prefix + "tests"]}
    amqp_options = {"url": options.url}
    if options.password_file:
        amqp_options["password_file"] = options.password_file
    connection = amqp.connect(amqp.AmqpSettings(connection_name="bench/scan", **amqp_options), attempts=5)
    channel = connection.channel()
    ensure_queue(channel, description, prefix + "tests")
    scratch = tempfile.mkdtemp(prefix="bench-scan-")
    contexts = ["os-%d/default" % n for n in range(options.contexts)]
    testmap = os.path.join(scratch, "testmap.yml")
    with open(testmap, "w") as handle:
        json.dump({"defaults": {"queue": prefix + "tests", "timeout": 3600},
                   "allow": {"associations": ["MEMBER"]},
                   "repos": {REPO: {"branches": {"main": contexts}}}}, handle)
    try:
        with fake.FakeGitHub() as github:
            github.add_repo(REPO)
            github.set_branch(REPO, "main", "f" * 40)
            for number in range(1, options.prs + 1):
                github.add_pull(REPO, number, "%040x" % (0xabc000 + number), author="dev%d" % (number % 7),
                                author_association="MEMBER")
            args = dict(amqp_options, repo=REPO, testmap=testmap, api_url=github.url, token=github.token,
                        exchange=description["exchange"], etag_cache_dir=os.path.join(scratch, "etags"))
            say("first full scan of %d PRs x %d contexts" % (options.prs, options.contexts))
            first, first_reads, first_writes, first_s = measured(github, args)
            say("rescan, nothing changed")
            again, rescan_reads, rescan_writes, rescan_s = measured(github, args)
            say("rescan after PR #1 moved to a new head")
            github.update_pull(REPO, 1, head_sha="%040x" % 0xdef001)
            moved, moved_reads, moved_writes, moved_s = measured(github, args)
        published = channel.queue_declare(prefix + "tests", passive=True).method.message_count
    finally:
        for queue in expand(description)["queues"]:
            channel.queue_delete(queue["name"])
        for exchange in expand(description)["exchanges"]:
            channel.exchange_delete(exchange["name"])
        connection.close()
    figures = {
        "prs": options.prs,
        "contexts": options.contexts,
        "first_scan_counted": first_reads,
        "first_scan_counted_per_pr": round(first_reads / options.prs, 3),
        "first_scan_writes": first_writes,
        "first_scan_queued": len(first["queued"]),
        "first_scan_s": round(first_s, 3),
        "rescan_counted": rescan_reads + rescan_writes,
        "rescan_queued": len(again["queued"]),
        "rescan_cached": sum(1 for item in again["plan"] if item.get("cached")),
        "rescan_s": round(rescan_s, 3),
        "moved_counted": moved_reads,
        "moved_writes": moved_writes,
        "moved_queued": len(moved["queued"]),
        "moved_s": round(moved_s, 3),
        "jobs_published": published,
        "jobs_expected": len(first["queued"]) + len(moved["queued"]),
    }
    figures["targets_met"] = {
        "first_scan_counted_per_pr_le_1_1": figures["first_scan_counted_per_pr"] <= 1.1,
        "rescan_counted_le_5": figures["rescan_counted"] <= 5,
        "one_job_per_context": published == figures["jobs_expected"],
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
