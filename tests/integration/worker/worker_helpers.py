"""Helpers of the worker's integration tests (the fixtures are in conftest.py)."""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
WORKER_BIN = REPO_ROOT / "bin" / "testfleet-worker"


def free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout, interval=0.1, what="the condition"):
    """Poll ``predicate`` until it returns a true value; return it, or fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def subprocess_env(**extra):
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "/usr/bin:/bin")])
    env.update(extra)
    return env


class Broker:
    """A test's own topology on the shared broker, and helpers to publish and inspect it."""

    def __init__(self, amqp_settings, prefix, delivery_limit=3, extra_queues=()):
        from ansible_collections.testfleet.infra.plugins.module_utils import amqp

        self.amqp = amqp
        self.settings = amqp_settings
        self.prefix = prefix
        self.queue = prefix + ".jobs"
        self.other_queue = prefix + ".other"  # for workers that consume two queues
        self.dead_letter_queue = prefix + ".dead"
        self.topology = {
            "exchange": prefix + ".x",
            "dead_letter_exchange": prefix + ".dlx",
            "dead_letter_queue": self.dead_letter_queue,
            "delivery_limit": delivery_limit,
            "queues": [self.queue, self.other_queue] + list(extra_queues),
        }
        # more topology entries (names or mappings), e.g. a single-active-consumer queue
        self.extra_queues = [q if isinstance(q, str) else q["name"] for q in extra_queues]
        self.connection = amqp.connect(amqp_settings)
        from ansible_collections.testfleet.infra.plugins.module_utils import topology

        for queue in [self.queue, self.other_queue] + self.extra_queues:
            topology.ensure_queue(self.connection.channel(), self.topology, queue)
        self.publisher = amqp.ConfirmedPublisher(self.connection)

    def publish(self, job, raw=False, queue=None):
        from ansible_collections.testfleet.infra.plugins.module_utils import jobs

        body = job if raw else jobs.encode_job(job)
        self.publisher.publish(self.topology["exchange"], queue or self.queue, body,
                               message_id=None if raw else job["id"])

    def count(self, queue=None):
        """Messages ready in ``queue`` (not those delivered and unacked)."""
        channel = self.connection.channel()
        try:
            return channel.queue_declare(queue or self.queue, passive=True).method.message_count
        finally:
            channel.close()

    def get(self, queue):
        """Take one message (acked) from ``queue``: (properties, body) or None."""
        channel = self.connection.channel()
        try:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            return None if method is None else (properties, body)
        finally:
            channel.close()

    def delete(self):
        try:
            if not self.connection.is_open:
                self.connection = self.amqp.connect(self.settings)
            channel = self.connection.channel()
            for queue in [self.queue, self.other_queue, self.dead_letter_queue] + self.extra_queues:
                channel.queue_delete(queue)
            for exchange in (self.topology["exchange"], self.topology["dead_letter_exchange"]):
                channel.exchange_delete(exchange)
            self.connection.close()
        except Exception as exc:  # report, do not mask the test's own failure
            print("cleanup of %s failed: %s" % (self.prefix, exc))


class WorkerProcess:
    """``testfleet-worker --config FILE --slot N`` as a child process, its log in a file."""

    def __init__(self, config_path, slot, log_path, program=WORKER_BIN, env=None):
        self.log_path = log_path
        self.handle = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(program), "--config", str(config_path), "--slot", str(slot)],
                                     stdout=self.handle, stderr=subprocess.STDOUT, env=subprocess_env(**(env or {})),
                                     start_new_session=True)

    @property
    def log(self):
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def wait_log(self, text, timeout=30):
        return wait_for(lambda: text in self.log, timeout, what="%r in the worker log:\n%s" % (text, self.log[-3000:]))

    def signal(self, signum):
        self.proc.send_signal(signum)

    def wait(self, timeout=60):
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.handle.close()


def read_result(logs_dir, job_id):
    path = pathlib.Path(logs_dir) / job_id / "result.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_result(logs_dir, job_id, timeout=60, final=True):
    """The job's result.json once it exists (and is final unless ``final`` is False)."""
    def check():
        result = read_result(logs_dir, job_id)
        if result and (not final or result.get("outcome") != "running"):
            return result
        return None
    return wait_for(check, timeout, interval=0.2, what="the result of job %s in %s" % (job_id, logs_dir))


def job(kind="noop", **fields):
    spec = {"version": 1, "id": "j-%s" % uuid.uuid4().hex[:12], "kind": kind}
    spec.update(fields)
    return spec


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"] + list(args),
                   cwd=cwd, check=True, capture_output=True)


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of the broker; ``down()`` drops every connection and
    refuses new ones (what a client sees when the broker restarts), ``up()`` serves again."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.accepted = 0
        self.sockets = []
        self.listener = None
        self.lock = threading.Lock()

    def up(self):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, dummy = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.accepted += 1
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self):
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
