"""playbooks/jobs/scan.yml with the scan state: full scan jobs by ansible-playbook, as a worker runs
them (settings from the config file; the ETag cache and the scan state in forge-cache/ of its
worker.work_dir), against the fake GitHub and the real broker: args.fresh and args.rebuild reach
the module."""

import json
import os
import subprocess
import sys

from ansible_collections.testfleet.infra.plugins.module_utils import amqp

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.scan.plan import job_id
from ansible_collections.testfleet.infra.plugins.module_utils.topology import ensure_queue

REPO = "org/proj"
SHA = "6" * 40
PLAYBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "playbooks", "jobs", "scan.yml")


def scan_job(tmp_path, collections_path, config, **args):
    """Run a full scan job of REPO with ``args``; return the completed ansible-playbook."""
    job = {"version": 1, "id": "scan-" + ("-".join(sorted(args)) or "plain"), "kind": "scan", "repo": REPO,
           "args": dict(args, trigger="timer"), "testfleet_config": str(config)}
    extra_vars = tmp_path / "job.json"
    extra_vars.write_text(json.dumps(job))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"), ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote"))
    env.pop("TESTFLEET_CONFIG", None)
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
               "-e", "@%s" % extra_vars, PLAYBOOK]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def status_reads(github):
    return [r["path"] for r in github.requests if r["path"].endswith("/status")]


def test_full_scans_use_the_scan_state_and_rebuild_publishes_queued_jobs_again(
        tmp_path, collections_path, amqp_options, amqp_settings, fake_github, topology, broker):
    queue = topology["queues"][0]
    connection = amqp.connect(amqp_settings)
    ensure_queue(connection.channel(), topology, queue)
    connection.close()
    testmap = tmp_path / "testmap.yml"
    testmap.write_text("defaults: {queue: %s}\nrepos:\n  %s:\n    heads: false\n    branches:\n      main: [ctx/a]\n"
                       % (queue, REPO))
    token_file = tmp_path / "github-token"
    token_file.write_text(fake_github.token)
    cache = tmp_path / "work" / "forge-cache"
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({"amqp": amqp_options, "forge": {"api_url": fake_github.url,
                                                                  "token_file": str(token_file)},
                                  "worker": {"queues": [queue], "work_dir": str(tmp_path / "work")},
                                  "testmap": str(testmap), "topology": topology}))
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 7, SHA)
    channel = broker.channel()

    first = scan_job(tmp_path, collections_path, config)
    assert "timer: 1 commit(s) scanned; queued ['ctx/a']" in first.stdout
    assert (cache / "scan-state.json").is_file()
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert properties.message_id == job_id(REPO, SHA, "ctx/a", 1)
    lost = json.loads(body)                       # the broker loses it

    fake_github.reset_records()
    again = scan_job(tmp_path, collections_path, config)
    assert "1 commit(s) not read (scan state)" in again.stdout and "queued []" in again.stdout
    assert status_reads(fake_github) == []

    fresh = scan_job(tmp_path, collections_path, config, fresh=True)
    assert "0 commit(s) not read (scan state)" in fresh.stdout and "queued []" in fresh.stdout
    assert status_reads(fake_github) == ["/repos/%s/commits/%s/status" % (REPO, SHA)]
    assert channel.basic_get(queue)[0] is None

    rebuilt = scan_job(tmp_path, collections_path, config, rebuild=True)
    assert "queued [], published again ['ctx/a']" in rebuilt.stdout
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert properties.message_id == job_id(REPO, SHA, "ctx/a", 1) and json.loads(body) == lost
    assert channel.basic_get(queue)[0] is None
    [posted] = fake_github.statuses(REPO, SHA, "ctx/a")      # no status posted by the rebuild
    assert statuses.parse(posted)[:2] == ("queued", 1)
