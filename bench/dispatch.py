# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of testfleet-worker's dispatch: queued noop jobs against bare ansible-runner.

    .venv/bin/python bench/dispatch.py [--url URL] [--password-file FILE] [--jobs 50] [--slots 1 2] [--rounds 5]

Self-contained: for each slot count it starts that many ``testfleet-worker`` processes (one per
slot, as systemd would) against the running broker, on a topology of its own
(``bench-dispatch-<id>.*``, deleted at the end), with a local log store in a temporary
directory. It publishes ``--jobs`` noop jobs (persistent, confirmed) and waits for every
``result.json``. The floor is the same playbook (``playbooks/jobs/noop.yml``, same inventory,
same extra vars) run in a loop by bare ansible-runner, in as many parallel processes as slots,
without the worker and without its log callback. Worker and floor alternate in ``--rounds``
rounds (a fifth of the jobs each by default), so that both see the same changes of the
machine's load; a worker round during which a worker lost the broker (someone restarted it)
is measured again.

Figures per slot count (one JSON line each):

``jobs_per_min``        jobs / the rounds' time from first publish to last result stored
``floor_jobs_per_min``  runs / the rounds' wall time of the bare ansible-runner loops
``overhead_pct``        how much longer a job takes through the worker than on the floor,
                        ``(floor_jobs_per_min / jobs_per_min - 1) * 100`` (the target: <= 20)
``p50_latency_s``, ``p99_latency_s``
                        dispatch latency: from the moment a job could start (published, and
                        its slot free: the end of the slot's previous job) to its first task
``floor_p50_latency_s`` the same on the floor: from ansible_runner.run() to the first task
``p50_enqueue_to_first_task_s``, ``p99_enqueue_to_first_task_s``
                        from publish to first task, queueing behind earlier jobs included

The last line is one JSON object: the figures of the first slot count at the top level, every
run under ``by_slots``, and the machine's load (``cpu_count``, ``loadavg_before``,
``loadavg_after``): other work on the machine slows the worker and the floor alike, so
``overhead_pct`` is the figure to compare, not the rates.
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYBOOK = os.path.join(ROOT, "playbooks", "jobs", "noop.yml")
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def say(text):
    print("bench/dispatch: %s" % text, file=sys.stderr, flush=True)


def collections_tree(scratch):
    """A directory holding ansible_collections/testfleet/infra -> this checkout."""
    tree = os.path.join(scratch, "collections")
    os.makedirs(os.path.join(tree, "ansible_collections", "testfleet"))
    os.symlink(ROOT, os.path.join(tree, "ansible_collections", "testfleet", "infra"))
    return tree


def parse_time(text):
    """Seconds since the epoch of an ISO timestamp (``Z`` or an offset; naive means UTC)."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def percentile(values, pct):
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, int(round(pct / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def noop_job(job_id):
    return {"version": 1, "id": job_id, "kind": "noop"}


# --- the floor: bare ansible-runner in a loop ---------------------------------------------------
def floor_loop(count, scratch, collections, out):
    """Child process: run noop.yml ``count`` times with ansible-runner; write timings to ``out``."""
    import ansible_runner

    runs = []
    for index in range(count):
        private = tempfile.mkdtemp(prefix="floor-", dir=scratch)
        first = []
        on_event = first_task_recorder(first)
        started = time.time()
        runner = ansible_runner.run(
            private_data_dir=private, playbook=PLAYBOOK,
            inventory={"all": {"hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}},
            extravars=noop_job("floor-%d" % index),
            envvars={"PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")]),
                     "ANSIBLE_COLLECTIONS_PATH": collections, "ANSIBLE_NOCOLOR": "1"},
            ident="run", quiet=True, settings={"suppress_ansible_output": True}, event_handler=on_event)
        ended = time.time()
        shutil.rmtree(private, ignore_errors=True)
        if runner.status != "successful":
            raise SystemExit("floor run %d: ansible-runner status %s" % (index, runner.status))
        runs.append({"start": started, "first_task": first[0] if first else None, "end": ended})
    with open(out, "w") as handle:
        json.dump(runs, handle)


def first_task_recorder(first):
    """An ansible-runner event handler that appends the time of the first task to ``first``."""
    def on_event(event):
        if event.get("event") == "playbook_on_task_start" and not first:
            first.append(parse_time(event["created"]))
        return True
    return on_event


def run_floor(slots, jobs, scratch, collections, tag):
    per_process = [jobs // slots + (1 if i < jobs % slots else 0) for i in range(slots)]
    procs, outs = [], []
    for index, count in enumerate(per_process):
        out = os.path.join(scratch, "floor-%s-%d.json" % (tag, index))
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--floor-child", str(count), scratch,
                                       collections, out]))
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("a floor process failed")
    runs = []
    for out in outs:
        with open(out) as handle:
            runs.extend(json.load(handle))
    # from the first run's start to the last run's end: the children's own start-up (Python,
    # importing ansible_runner) is not the floor's cost per job
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"latency": [r["first_task"] - r["start"] for r in runs if r["first_task"]], "wall": wall}


# --- the worker ---------------------------------------------------------------------------------
class Bench:
    def __init__(self, url, password_file, scratch):
        sys.path.insert(0, collections_tree(scratch))
        from ansible_collections.testfleet.infra.plugins.module_utils import amqp
        from ansible_collections.testfleet.infra.plugins.module_utils import jobs
        from ansible_collections.testfleet.infra.plugins.module_utils import topology

        self.amqp, self.jobs, self.topology_lib = amqp, jobs, topology
        self.url = url
        self.password_file = password_file
        self.scratch = scratch
        self.collections = os.path.join(scratch, "collections")
        self.prefix = "bench-dispatch-%s" % uuid.uuid4().hex[:8]
        self.queue = self.prefix + ".jobs"
        self.topology = {"exchange": self.prefix + ".x", "dead_letter_exchange": self.prefix + ".dlx",
                         "dead_letter_queue": self.prefix + ".dead", "queues": [self.queue]}
        self.settings = amqp.AmqpSettings(url, password_file=password_file, connection_name="bench/dispatch")
        self.connection = amqp.connect(self.settings)
        topology.ensure_queue(self.connection.channel(), self.topology, self.queue)
        self.publisher = amqp.ConfirmedPublisher(self.connection)

    def config(self, logs, slots):
        import yaml

        path = os.path.join(self.scratch, "config-%d.yml" % slots)
        with open(path, "w") as handle:
            yaml.safe_dump({
                "amqp": dict({"url": self.url}, **({"password_file": self.password_file} if self.password_file else {})),
                "worker": {"queues": [self.queue], "slots": slots, "default_timeout": 600,
                           "work_dir": os.path.join(self.scratch, "work-%d" % slots),
                           "metrics_dir": os.path.join(self.scratch, "metrics-%d" % slots), "host_name": "bench"},
                "log_store": {"url": "file://%s" % logs},
                "topology": self.topology,
            }, handle)
        return path

    def run(self, slots, jobs, rounds):
        """Worker and floor in alternating rounds, so that both see the same machine load."""
        logs = os.path.join(self.scratch, "logs-%d" % slots)
        config = self.config(logs, slots)
        workers = []
        for slot in range(slots):
            log_path = os.path.join(self.scratch, "worker-%d-%d.log" % (slots, slot))
            log = open(log_path, "wb")
            workers.append((subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "testfleet-worker"), "--config", config,
                                              "--slot", str(slot)], stdout=log, stderr=subprocess.STDOUT), log, log_path))
        sizes = [jobs // rounds + (1 if i < jobs % rounds else 0) for i in range(rounds)]
        worker_rounds, floor_rounds, retried = [], [], 0
        try:
            self._wait_consumers(slots)
            for index, size in enumerate(sizes):
                for attempt in range(3):
                    lost_before = self._connection_losses(workers)
                    figures = self._worker_round(slots, "%d-%d-%d" % (slots, index, attempt), size, logs)
                    if self._connection_losses(workers) == lost_before:
                        break
                    retried += 1
                    say("round %d: a worker lost the broker meanwhile (restarted by someone?): measuring it again" % index)
                    self._wait_consumers(slots)
                worker_rounds.append(figures)
                floor_rounds.append(run_floor(slots, size, self.scratch, self.collections, "%d-%d" % (slots, index)))
        finally:
            for proc, log, dummy in workers:
                proc.send_signal(signal.SIGTERM)
            for proc, log, dummy in workers:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.close()
        dispatch = [x for r in worker_rounds for x in r["dispatch"]]
        queued = [x for r in worker_rounds for x in r["queued"]]
        floor_latency = [x for r in floor_rounds for x in r["latency"]]
        wall = sum(r["wall"] for r in worker_rounds)
        floor_wall = sum(r["wall"] for r in floor_rounds)
        return {
            "slots": slots, "jobs": jobs, "rounds": rounds, "rounds_measured_again": retried,
            "jobs_per_min": round(jobs / wall * 60, 2), "floor_jobs_per_min": round(jobs / floor_wall * 60, 2),
            "overhead_pct": round((wall / floor_wall - 1) * 100, 1),
            "p50_latency_s": round(percentile(dispatch, 50), 3), "p99_latency_s": round(percentile(dispatch, 99), 3),
            "floor_p50_latency_s": round(percentile(floor_latency, 50), 3),
            "p50_enqueue_to_first_task_s": round(percentile(queued, 50), 3),
            "p99_enqueue_to_first_task_s": round(percentile(queued, 99), 3),
            "wall_s": round(wall, 2), "floor_wall_s": round(floor_wall, 2),
        }

    @staticmethod
    def _connection_losses(workers):
        count = 0
        for dummy, log, path in workers:
            log.flush()
            with open(path, "rb") as handle:
                count += handle.read().count(b"lost the broker connection")
        return count

    def _worker_round(self, slots, tag, size, logs):
        ids = ["bench-%s-%03d" % (tag, i) for i in range(size)]
        published = {}
        for job_id in ids:
            published[job_id] = time.time()
            self.publisher.publish(self.topology["exchange"], self.queue, self.jobs.encode_job(noop_job(job_id)),
                                   message_id=job_id)
        results = self._wait_results(logs, ids, timeout=60 + size * 30)
        return self._figures(published, results)

    def _wait_consumers(self, slots, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            channel = self.connection.channel()
            consumers = channel.queue_declare(self.queue, passive=True).method.consumer_count
            channel.close()
            if consumers >= slots:
                return
            time.sleep(0.2)
        raise SystemExit("the workers did not start consuming within %d s (see %s)" % (timeout, self.scratch))

    @staticmethod
    def _wait_results(logs, ids, timeout):
        end = time.time() + timeout
        results = {}
        while time.time() < end:
            for job_id in ids:
                if job_id in results:
                    continue
                try:
                    with open(os.path.join(logs, job_id, "result.json")) as handle:
                        result = json.load(handle)
                except (OSError, ValueError):
                    continue
                if result.get("outcome") != "running":
                    results[job_id] = result
            if len(results) == len(ids):
                return results
            time.sleep(0.1)
        raise SystemExit("only %d of %d jobs finished within %d s" % (len(results), len(ids), timeout))

    @staticmethod
    def _figures(published, results):
        bad = [r for r in results.values() if r["outcome"] != "success"]
        if bad:
            raise SystemExit("%d jobs did not succeed, e.g. %s" % (len(bad), bad[0]))
        by_host = {}
        for job_id, result in results.items():
            by_host.setdefault(result["host"], []).append((parse_time(result["start"]), job_id, result))
        dispatch, queued = [], []
        for runs in by_host.values():
            previous_end = None
            for dummy, job_id, result in sorted(runs):
                first = parse_time(result["first_task"])
                ready = published[job_id] if previous_end is None else max(published[job_id], previous_end)
                dispatch.append(first - ready)
                queued.append(first - published[job_id])
                previous_end = parse_time(result["end"])
        wall = max(parse_time(r["end"]) for r in results.values()) - min(published.values())
        return {"dispatch": dispatch, "queued": queued, "wall": wall}

    def close(self):
        try:
            channel = self.connection.channel()
            for queue in (self.queue, self.topology["dead_letter_queue"]):
                channel.queue_delete(queue)
            for exchange in (self.topology["exchange"], self.topology["dead_letter_exchange"]):
                channel.exchange_delete(exchange)
            self.connection.close()
        except Exception as exc:
            say("cleaning up %s failed: %s" % (self.prefix, exc))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--floor-child":
        floor_loop(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--url", default=os.environ.get("TESTFLEET_AMQP_URL", DEFAULT_URL),
                        help="the broker (default $TESTFLEET_AMQP_URL or %s)" % DEFAULT_URL)
    parser.add_argument("--password-file", default=os.environ.get("TESTFLEET_AMQP_PASSWORD_FILE"),
                        help="file holding the password of the URL's user (default $TESTFLEET_AMQP_PASSWORD_FILE)")
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="worker and floor alternate in this many rounds (load drift)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs of the workers and jobs)")
    args = parser.parse_args()
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")])
    scratch = tempfile.mkdtemp(prefix="bench-dispatch-")
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    bench = Bench(args.url, args.password_file, scratch)
    runs = []
    try:
        for slots in args.slots:
            say("%d slot(s): %d noop jobs through testfleet-worker, and %d runs of bare ansible-runner in %d process(es), "
                "in %d alternating rounds" % (slots, args.jobs, args.jobs, slots, args.rounds))
            figures = bench.run(slots, args.jobs, args.rounds)
            figures["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(figures, sort_keys=True), flush=True)
            runs.append(figures)
    finally:
        bench.close()
        if args.keep:
            say("kept %s" % scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    summary = dict((k, v) for k, v in runs[0].items() if k not in ("loadavg",))
    summary.update({"by_slots": runs, "cpu_count": os.cpu_count(), "loadavg_before": loadavg_before,
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "target_overhead_pct": 20})
    print(json.dumps(summary, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
