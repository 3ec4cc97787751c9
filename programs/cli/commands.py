# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""testfleet: the operator's command line (queues, jobs, dead letters, replays, scans).

``testfleet [--config FILE] [--json] COMMAND``; everything goes over AMQP with the ``amqp``
section and the ``topology`` of the config file (no management plugin needed):

``queues``
    each queue of the topology: messages ready and consumers (a passive declare).
``jobs QUEUE [--limit N] [--peek]``
    the jobs waiting in QUEUE, without consuming them. On a work queue that is only possible
    outside AMQP: every AMQP read of a quorum-queue message (``basic.get`` then ``reject``,
    ``nack`` or ``recover`` with requeue, or closing the channel) counts as a delivery and
    raises ``x-delivery-count``, measured on RabbitMQ 3.10, so at the queue's
    ``x-delivery-limit`` reading would dead-letter jobs. So ``jobs`` shows the counts only,
    unless ``--peek``: then it runs ``rabbitmq-queues peek`` (on a node of the broker's cluster,
    as a user that may run it), which shows each message's id, delivery count and the start of
    its body without a delivery. The dead-letter queue (no delivery limit) is read in full.
``dead-letters [--limit N]``
    the dead-letter queue, read without consuming it (each message is taken without ack, then
    all are given back): job id, kind, original queue and the reason (the header
    ``x-testfleet-reason`` the worker sets, else the broker's ``x-death``).
``replay (--all | ID...)``
    moves dead letters back to their original queue: each is published (persistent, confirmed)
    through the topology's exchange, then acked in the dead-letter queue. The dead-letter
    headers are dropped and ``x-testfleet-replayed`` counts the replays.
``retest REPO PULL [CONTEXT...]``
    publishes a scan job for the pull request with a retest command (``args.commands``); the
    command's ``user`` is ``operator:<login name>``, which no GitHub login can be (GitHub logins
    have no ``:``): whoever may publish to the broker is trusted; ``created_at`` is now.
``scan [REPO...] [--trigger NAME]``
    publishes one scan job per repository (default: every repository of the config's test
    map): ``{"kind": "scan", "repo": ..., "args": {"trigger": ...}}`` without ``pull``, ``sha``
    or ``ref`` asks for a full scan of the repository (its open pull requests and branches).
    The periodic timer and a cold start after a broker loss run this.

The broker side is in ``broker.py``, the jobs published in ``scan_jobs.py``, the errors and
exit codes in ``errors.py``; this file is the command line and its output.

Output is a table for people, or JSON with ``--json``. Exit codes: 0 done, 1 the broker (or
``rabbitmq-queues``) failed or some items could not be done, 2 usage or config errors.
Secrets (the broker password) never appear in the output.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils import topology as topology_lib
from ansible_collections.testfleet.infra.programs.cli.broker import Operator, peek
from ansible_collections.testfleet.infra.programs.cli.errors import (
    EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandFailed, UsageError)
from ansible_collections.testfleet.infra.programs.cli.scan_jobs import configured_repos, retest_job, scan_job

pika = amqp.pika

DEFAULT_LIMIT = 20
MAX_LIMIT = 10000
TRIGGER_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
COUNTS_ONLY_NOTE = (
    "Jobs not listed: reading a message of a quorum queue over AMQP counts as a delivery "
    "(x-delivery-count goes up) and pushes it toward the dead-letter queue. On a node of the "
    "broker's cluster, --peek lists them through rabbitmq-queues without a delivery.")


# --- formatting ---------------------------------------------------------------------------------

def _cell(value, width=None):
    text = "-" if value is None else ("yes" if value is True else "no" if value is False else str(value))
    text = " ".join(text.split())
    if width and len(text) > width:
        text = text[:width - 3] + "..."
    return text


def format_table(rows, columns, widths=None):
    """Rows (dicts) as an aligned text table; ``columns`` is [(key, TITLE)], ``widths`` caps columns."""
    widths = widths or {}
    cells = [[_cell(row.get(key), widths.get(key)) for key, dummy in columns] for row in rows]
    sizes = [max([len(title)] + [len(line[i]) for line in cells]) for i, (dummy, title) in enumerate(columns)]
    lines = ["  ".join(title.ljust(size) for (dummy, title), size in zip(columns, sizes)).rstrip()]
    for line in cells:
        lines.append("  ".join(text.ljust(size) for text, size in zip(line, sizes)).rstrip())
    return "\n".join(lines)


# --- commands -----------------------------------------------------------------------------------

def _emit(args, document, table):
    if args.json:
        sys.stdout.write(json.dumps(amqp.plain(document), sort_keys=True) + "\n")
    else:
        sys.stdout.write(table.rstrip("\n") + "\n")


def cmd_queues(args, cfg, operator):
    rows = operator.queue_rows()
    table = format_table(rows, [("queue", "QUEUE"), ("ready", "READY"), ("consumers", "CONSUMERS"),
                                ("delivery_limit", "DELIVERY LIMIT"), ("single_active_consumer", "SINGLE ACTIVE"),
                                ("role", "ROLE")])
    missing = [r["queue"] for r in rows if not r["exists"]]
    if missing:
        table += "\nmissing on the broker (apply the topology): %s" % ", ".join(missing)
    for row in rows:
        if row["differs"]:
            table += "\n%s differs from the topology on the broker in %s: amqp_topology explains how to migrate it" % (
                row["queue"], ", ".join(row["differs"]))
    _emit(args, {"queues": rows}, table)
    return EXIT_OK


DEAD_LETTER_COLUMNS = [("id", "ID"), ("kind", "KIND"), ("queue", "QUEUE"), ("reason", "REASON")]


def cmd_dead_letters(args, cfg, operator):
    stats = operator.stats(operator.dead_letter_queue)
    if stats is None:
        raise CommandFailed("the dead-letter queue %r does not exist (apply the topology)" % operator.dead_letter_queue)
    rows = operator.read_dead_letters(args.limit)
    table = format_table(rows, DEAD_LETTER_COLUMNS, widths={"reason": 100, "id": 60})
    table += "\n%d of %d dead letters shown (queue %s)" % (len(rows), max(stats[0], len(rows)), operator.dead_letter_queue)
    _emit(args, {"queue": operator.dead_letter_queue, "ready": max(stats[0], len(rows)), "dead_letters": rows}, table)
    return EXIT_OK


def cmd_jobs(args, cfg, operator):
    queue = operator.queue(args.queue)
    if queue["name"] == operator.dead_letter_queue:
        return cmd_dead_letters(args, cfg, operator)
    stats = operator.stats(queue["name"])
    if stats is None:
        raise CommandFailed("queue %r does not exist on the broker (apply the topology)" % queue["name"])
    ready, consumers = stats
    limit = queue["arguments"].get("x-delivery-limit")
    document = {"queue": queue["name"], "ready": ready, "consumers": consumers, "delivery_limit": limit}
    summary = "queue %s: %d ready, %d consumers, delivery limit %s" % (queue["name"], ready, consumers, limit)
    if not args.peek:
        document.update(jobs=None, note=COUNTS_ONLY_NOTE)
        _emit(args, document, "%s\n%s" % (summary, COUNTS_ONLY_NOTE))
        return EXIT_OK
    vhost = cfg.amqp_settings().parameters().virtual_host
    rows = peek(queue["name"], vhost, min(args.limit, ready)) if ready else []
    document["jobs"] = rows
    table = format_table(rows, [("position", "#"), ("id", "ID"), ("deliveries", "DELIVERIES"), ("kind", "KIND"),
                                ("body_start", "BODY (FIRST 64 BYTES)")])
    _emit(args, document, "%s\n%s\n%d of %d shown (rabbitmq-queues peek)" % (summary, table, len(rows), ready))
    return EXIT_OK


def cmd_replay(args, cfg, operator):
    if args.all == bool(args.ids):
        raise UsageError("replay needs either --all or one or more job ids")
    ids = None if args.all else set(args.ids)
    rows = operator.replay(ids)
    missing = sorted(ids - set(r["id"] for r in rows)) if ids is not None else []
    failed = [r for r in rows if not r["replayed"]]
    table = format_table(rows, [("id", "ID"), ("kind", "KIND"), ("queue", "QUEUE"), ("replayed", "REPLAYED"),
                                ("problem", "PROBLEM")], widths={"problem": 100}) if rows else "nothing to replay"
    if missing:
        table += "\nnot in the dead-letter queue: %s" % ", ".join(missing)
    _emit(args, {"replayed": [r for r in rows if r["replayed"]], "failed": failed, "not_found": missing}, table)
    return EXIT_FAILED if failed or missing else EXIT_OK


def _scan_queue(args, cfg, operator):
    queue = args.queue or cfg.webhook["queue"]
    operator.queue(queue)
    return queue


def _published(args, queue, published):
    rows = [{"id": j["id"], "repo": j["repo"], "pull": j.get("pull"), "queue": queue, "args": j["args"]} for j in published]
    table = format_table(rows, [("id", "JOB"), ("repo", "REPO"), ("pull", "PULL"), ("queue", "QUEUE")])
    _emit(args, {"published": published, "queue": queue}, "published:\n" + table)
    return EXIT_OK


def cmd_retest(args, cfg, operator):
    for context in args.contexts:
        if not jobs.CONTEXT_RE.match(context):
            raise UsageError("%r is not a context name (such as debian-12/default)" % context)
    queue = _scan_queue(args, cfg, operator)
    job = retest_job(args.repo, args.pull, args.contexts)
    operator.publish_job(queue, job)
    return _published(args, queue, [job])


def cmd_scan(args, cfg, operator):
    queue = _scan_queue(args, cfg, operator)
    repos = args.repos or configured_repos(cfg)
    published = []
    for repo in repos:
        job = scan_job(repo, args.trigger, fresh=args.fresh, rebuild=args.rebuild)
        operator.publish_job(queue, job)
        published.append(job)
    return _published(args, queue, published)


COMMANDS = {
    "queues": cmd_queues,
    "jobs": cmd_jobs,
    "dead-letters": cmd_dead_letters,
    "replay": cmd_replay,
    "retest": cmd_retest,
    "scan": cmd_scan,
}


# --- command line -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError("%s: %s (see %s --help)" % (self.prog, message, self.prog))


def _limit(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number, not %r" % text)
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError("must be from 1 to %d" % MAX_LIMIT)
    return value


def _repo(text):
    if not jobs.REPO_RE.match(text):
        raise argparse.ArgumentTypeError("%r is not a repository as OWNER/NAME" % text)
    return text


def _pull(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("%r is not a pull request number" % text)
    return int(text)


def _trigger(text):
    if not TRIGGER_RE.match(text):
        raise argparse.ArgumentTypeError("%r: a trigger is a short lower-case word such as timer" % text)
    return text


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document instead of a table")
    parser = _Parser(prog="testfleet", parents=[common],
                     description="Operate testfleet's queues over AMQP: list queues, jobs and dead letters, "
                                 "replay dead letters, queue scans and retests.")
    parser.add_argument("--config", default=config_lib.default_path(),
                        help="the testfleet config file (default: $%s or %s)" % (config_lib.PATH_ENV, config_lib.DEFAULT_PATH))
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    commands.add_parser("queues", parents=[common], help="each queue of the topology: messages ready, consumers")
    sub = commands.add_parser("jobs", parents=[common], help="the jobs waiting in a queue, without consuming them")
    sub.add_argument("queue", metavar="QUEUE")
    sub.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, help="show at most N (default %d)" % DEFAULT_LIMIT)
    sub.add_argument("--peek", action="store_true",
                     help="list a work queue's jobs with rabbitmq-queues peek (on a broker node; no delivery is counted)")
    sub = commands.add_parser("dead-letters", parents=[common], help="the dead-letter queue, without consuming it")
    sub.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, help="show at most N (default %d)" % DEFAULT_LIMIT)
    sub = commands.add_parser("replay", parents=[common], help="move dead letters back to their original queue")
    sub.add_argument("--all", action="store_true", help="every dead letter")
    sub.add_argument("ids", nargs="*", metavar="ID", help="job ids (the message id) of the dead letters to replay")
    sub = commands.add_parser("retest", parents=[common], help="queue a scan of a pull request that retests contexts")
    sub.add_argument("repo", type=_repo, metavar="REPO")
    sub.add_argument("pull", type=_pull, metavar="PULL")
    sub.add_argument("contexts", nargs="*", metavar="CONTEXT", help="contexts to retest (none: every failed one)")
    sub.add_argument("--queue", help="the scan queue (default: the config's webhook.queue, events)")
    sub = commands.add_parser("scan", parents=[common], help="queue a full scan of repositories")
    sub.add_argument("repos", nargs="*", type=_repo, metavar="REPO", help="default: every repository of the test map")
    sub.add_argument("--trigger", type=_trigger, default="operator", help="args.trigger of the jobs (the timer: timer)")
    sub.add_argument("--fresh", action="store_true", help="read every commit from GitHub (ignore the scan state)")
    sub.add_argument("--rebuild", action="store_true",
                     help="after a broker lost its queues: also publish again the jobs of queued contexts")
    sub.add_argument("--queue", help="the scan queue (default: the config's webhook.queue, events)")
    return parser


def parse_args(argv):
    """Parsed arguments; raise UsageError on a wrong command line."""
    args = build_parser().parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    return args


def run(argv):
    """Run a command line; return the exit code (messages on stderr)."""
    try:
        args = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write("%s\n" % exc)
        return EXIT_USAGE
    try:
        cfg = config_lib.load(args.config)
        settings = cfg.amqp_settings(connection_name="testfleet cli")
        topology_lib.expand(cfg.topology)
    except (config_lib.ConfigError, topology_lib.TopologyError) as exc:
        sys.stderr.write("testfleet: %s\n" % exc)
        return EXIT_USAGE
    operator = None
    try:
        operator = Operator(amqp.connect(settings, attempts=3, retry_delay=1.0), cfg.topology)
        return COMMANDS[args.command](args, cfg, operator)
    except UsageError as exc:
        sys.stderr.write("testfleet: %s\n" % exc)
        return EXIT_USAGE
    except (CommandFailed, amqp.AmqpError) as exc:
        sys.stderr.write("testfleet: %s\n" % exc)
        return EXIT_FAILED
    except pika.exceptions.AMQPError as exc:
        sys.stderr.write("testfleet: the broker connection failed during %s: %s\n"
                         % (args.command, exc.__class__.__name__))
        return EXIT_FAILED
    finally:
        if operator is not None:
            try:
                operator.close()
            except Exception:
                pass


def main(argv=None):
    return run(sys.argv[1:] if argv is None else argv)
