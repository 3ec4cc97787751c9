"""The job_log callback inside a real ansible-playbook: redaction, a slow store, live output."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from worker_helpers import REPO_ROOT, free_port, job

PLAYBOOKS = REPO_ROOT / "tests" / "fixtures" / "worker" / "playbooks"
pytestmark = pytest.mark.timeout(120)


def run_playbook(tmp_path, collections_path, playbook, spec, **env):
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(spec))
    environment = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED="testfleet.infra.job_log", ANSIBLE_COLLECTIONS_PATH=collections_path,
                       TESTFLEET_SPOOL_DIR=str(tmp_path / "spool"), TESTFLEET_LOG_STORE="file://%s" % (tmp_path / "logs"))
    environment["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environment["PATH"]])
    environment.update(env)
    started = time.monotonic()
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), str(playbook), "-e", "@%s" % job_file],
                          cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=100, check=False)
    return proc, time.monotonic() - started


def test_no_log_values_and_job_secrets_never_reach_the_store(tmp_path, collections_path):
    secret = "tok-5f3e1c9a2b7d"
    spec = job("noop", args={"secrets": {"TOKEN": secret}})
    proc, dummy = run_playbook(tmp_path, collections_path, PLAYBOOKS / "secrets.yml", spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    folder = tmp_path / "logs" / spec["id"]
    log = (folder / "log").read_text()
    assert "secret=********" in log
    assert log.count("********\n") >= 3  # the streamed lines, each written in two halves
    assert "(output hidden: no_log)" in log
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["log", "log.html", "result.json"]
    for path in files + [p for p in (tmp_path / "spool").rglob("*") if p.is_file() and p.name != ".output"]:
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert b"d41d8cd98f00b204" not in data, path
    result = json.loads((folder / "result.json").read_text())
    assert result["job"]["args"]["secrets"] == {"TOKEN": "********"}
    assert result["outcome"] == "success"


class SilentServer:
    """Accepts TCP connections and never answers: the slowest possible log store."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", free_port()))
        self.sock.listen(64)
        self.clients = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.clients.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for client in self.clients:
            client.close()


def test_a_store_that_never_answers_does_not_slow_the_play(tmp_path, collections_path):
    spec = job("noop")
    proc, fast = run_playbook(tmp_path, collections_path, PLAYBOOKS / "many_tasks.yml", spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    server = SilentServer()
    try:
        spec = job("noop")
        proc, slow = run_playbook(tmp_path, collections_path, PLAYBOOKS / "many_tasks.yml", spec,
                                  TESTFLEET_LOG_STORE="s3://bucket/logs",
                                  TESTFLEET_LOG_STORE_ENDPOINT_URL="http://127.0.0.1:%d" % server.sock.getsockname()[1],
                                  AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y", TESTFLEET_LOG_FINAL_FLUSH_TIMEOUT="2",
                                  TESTFLEET_LOG_FLUSH_INTERVAL="0.1", TESTFLEET_LOG_FLUSH_BYTES="10")
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # at most the final flush's 2 s more than with a working store
    assert slow < fast + 6, (fast, slow)
    output = proc.stdout + proc.stderr
    assert "could not be stored" in output and str(tmp_path / "spool" / spec["id"]) in output
    local = (tmp_path / "spool" / spec["id"] / "log").read_text()
    assert local.count("msg: task ") == 20
    assert json.loads((tmp_path / "spool" / spec["id"] / "result.json").read_text())["outcome"] == "success"
