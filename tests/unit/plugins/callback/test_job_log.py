"""The job_log callback, loaded through Ansible's callback loader."""

import json
import os
import subprocess
import sys

from ansible_collections.testfleet.infra.plugins.plugin_utils import job_run
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore


# The collection loader must be set up before anything imports ansible_collections, which the
# other tests of this session already did: the loader's checks run in a fresh interpreter.
LOADER_CHECK = """
import json, os, sys
from ansible.plugins.loader import callback_loader, init_plugin_loader

init_plugin_loader([sys.argv[1]])
plugin = callback_loader.get("testfleet.infra.job_log", class_only=True)
callback = plugin()
callback.set_options()
options = dict((k, callback.get_option(k)) for k in (
    "log_store", "flush_interval", "flush_bytes", "final_flush_timeout", "spool_dir", "worker_pid", "config"))


class Play:
    extra_vars = {"some": "var"}

    def get_variable_manager(self):
        return self

    def get_name(self):
        return "a play"


callback.v2_playbook_on_play_start(Play())
print(json.dumps({"name": callback.CALLBACK_NAME, "needs_enabled": callback.CALLBACK_NEEDS_ENABLED,
                  "type": callback.CALLBACK_TYPE, "options": options, "job": callback.job,
                  "disabled": callback.disabled_reason, "spool": os.listdir(options["spool_dir"])}))
"""


def test_loads_through_the_callback_loader_with_its_documented_options(collections_path, tmp_path):
    env = dict(os.environ, TESTFLEET_LOG_STORE="s3://bucket/logs", TESTFLEET_LOG_FLUSH_INTERVAL="0.5",
               TESTFLEET_SPOOL_DIR=str(tmp_path))
    env.pop("TESTFLEET_WORKER_PID", None)
    proc = subprocess.run([sys.executable, "-c", LOADER_CHECK, collections_path], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.splitlines()[-1])
    assert (found["name"], found["needs_enabled"], found["type"]) == ("testfleet.infra.job_log", True, "notification")
    assert found["options"] == {"log_store": "s3://bucket/logs", "flush_interval": 0.5, "flush_bytes": 65536,
                                "final_flush_timeout": 15.0, "spool_dir": str(tmp_path), "worker_pid": None, "config": None}
    # a play without a job id in its extra vars is not logged
    assert found["job"] is None and "no job id" in found["disabled"]
    assert found["spool"] == []


def test_output_tail_finds_a_secret_split_between_reads(tmp_path):
    path = tmp_path / "output"
    out = []
    tail = job_run.OutputTail(str(path), logstore.Redactor(["tok-0123456789"]), out.append)
    tail.poll()
    assert out == []
    with open(path, "a") as handle:
        handle.write("line one\nvalue tok-01234")
    tail.poll()
    assert out == ["line one\nvalue "]  # what could start the secret waits
    with open(path, "a") as handle:
        handle.write("56789 end\n")
    tail.poll()
    assert "".join(out) == "line one\nvalue ******** end\n"
    with open(path, "a") as handle:
        handle.write("tok-0")
    tail.poll()
    with open(path, "a") as handle:
        handle.write("x is not it")
    tail.poll(final=True)
    assert "".join(out).endswith("end\ntok-0x is not it\n")


def test_output_tail_streams_partial_lines_and_ends_them(tmp_path):
    path = tmp_path / "output"
    out = []
    tail = job_run.OutputTail(str(path), logstore.Redactor([]), out.append)
    path.write_bytes("progress: 50% \u00e9".encode()[:-1])  # ends inside a UTF-8 character
    tail.poll()
    assert out == ["progress: 50% "]
    with open(path, "ab") as handle:
        handle.write("\u00e9".encode()[-1:] + b" 100%")
    tail.poll()
    tail.poll(final=True)
    assert out == ["progress: 50% ", "\u00e9 100%", "\n"]
