"""Fixtures of the worker's integration tests: real broker, real worker processes, real servers.

Every test gets its own queue topology (``wt-<random>.*``: exchange, work queue, dead-letter
exchange and queue), deleted afterwards; the shared default queues are never touched. Servers
(a TCP proxy in front of the broker, an HTTP server; moto_server comes from tests/conftest.py)
listen on 127.0.0.1 on free ports and are stopped by their fixtures.
"""

import os
import subprocess
import sys
import uuid

import pytest
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from worker_helpers import Broker, TcpProxy, WorkerProcess, git  # noqa: E402


@pytest.fixture
def broker(amqp_settings):
    test_broker = Broker(amqp_settings, "wt-%s" % uuid.uuid4().hex[:10])
    yield test_broker
    test_broker.delete()


@pytest.fixture
def worker_setup(tmp_path, broker, amqp_options):
    """``make_config(**overrides)`` writes a worker config; ``start(config, slot)`` starts a worker."""
    started = []

    def make_config(name="config.yml", worker=None, log_store=None, amqp=None, **rest):
        worker_section = {
            "queues": [broker.queue],
            "default_timeout": 60,
            "work_dir": str(tmp_path / "work"),
            "metrics_dir": str(tmp_path / "metrics"),
            "host_name": "wtest",
            "retry_delay": 0,
            "log_flush_interval": 0.5,
            "upload_timeout": 10,
        }
        worker_section.update(worker or {})
        config = {
            "amqp": dict(amqp_options, **(amqp or {})),
            "worker": worker_section,
            "log_store": log_store or {"url": "file://%s" % (tmp_path / "logs")},
            "topology": broker.topology,
        }
        config.update(rest)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(config))
        return path

    def start(config_path, slot=0):
        process = WorkerProcess(config_path, slot, tmp_path / ("worker-%s-%d.log" % (slot, len(started))))
        started.append(process)
        process.wait_log("connected to", timeout=30)
        return process

    yield make_config, start
    for process in started:
        process.stop()


@pytest.fixture
def make_repo(tmp_path):
    """``make_repo(run_script)``: a local git repository with ``.testfleet/run``; returns (url, sha)."""
    def make(script, name="project", files=None):
        repo = tmp_path / "repos" / name
        (repo / ".testfleet").mkdir(parents=True)
        run = repo / ".testfleet" / "run"
        run.write_text(script)
        run.chmod(0o755)
        for path, text in (files or {}).items():
            (repo / path).write_text(text)
        git(repo, "init", "-q")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "test project")
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()
        return "file://%s" % repo, sha
    return make


@pytest.fixture
def broker_proxy(amqp_options):
    from urllib.parse import urlsplit

    parts = urlsplit(amqp_options["url"])
    proxy = TcpProxy(parts.hostname, parts.port or 5672)
    proxy.up()
    url = parts._replace(netloc="%s@127.0.0.1:%d" % (parts.netloc.rpartition("@")[0], proxy.port)).geturl() \
        if "@" in parts.netloc else parts._replace(netloc="127.0.0.1:%d" % proxy.port).geturl()
    yield proxy, url
    proxy.down()
