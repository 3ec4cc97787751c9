"""playbooks/jobs/scan.yml run by ansible-playbook as a worker runs it: the job's fields as extra
vars, the settings from the config file named by testfleet_config, the fake GitHub, the real broker."""

import json
import os
import subprocess
import sys

from ansible_collections.testfleet.infra.plugins.module_utils import amqp

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.scan.plan import job_id
from ansible_collections.testfleet.infra.plugins.module_utils.topology import ensure_queue

REPO = "org/proj"
SHA = "4" * 40
PLAYBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "playbooks", "jobs", "scan.yml")


def run_playbook(tmp_path, collections_path, job, config, check=False):
    extra_vars = tmp_path / "job.json"
    extra_vars.write_text(json.dumps(dict(job, testfleet_config=str(config))))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"), ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote"))
    env.pop("TESTFLEET_CONFIG", None)
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
               "-e", "@%s" % extra_vars, PLAYBOOK] + (["--check"] if check else [])
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_the_scan_job_playbook(tmp_path, collections_path, amqp_options, amqp_settings, fake_github, topology, broker):
    queue = topology["queues"][0]
    connection = amqp.connect(amqp_settings)
    ensure_queue(connection.channel(), topology, queue)
    connection.close()
    testmap = tmp_path / "testmap.yml"
    testmap.write_text("defaults: {queue: %s}\nrepos:\n  %s:\n    heads: false\n    branches:\n      main: [ctx/a]\n"
                       % (queue, REPO))
    token_file = tmp_path / "github-token"
    token_file.write_text(fake_github.token)
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({"amqp": amqp_options, "forge": {"api_url": fake_github.url,
                                                                  "token_file": str(token_file)},
                                  "testmap": str(testmap), "topology": topology}))
    fake_github.add_repo(REPO)
    fake_github.add_pull(REPO, 7, SHA)
    fake_github.set_permission(REPO, "maint", "write")
    job = {"version": 1, "id": "gh-delivery-1", "kind": "scan", "repo": REPO, "pull": 7, "sha": SHA,
           "args": {"trigger": "pull_request/opened"}}

    checked = run_playbook(tmp_path, collections_path, job, config, check=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert fake_github.statuses(REPO, SHA) == []

    first = run_playbook(tmp_path, collections_path, job, config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "pull_request/opened: 1 commit(s) scanned; queued ['ctx/a']" in first.stdout
    assert fake_github.token not in first.stdout + first.stderr
    [posted] = fake_github.statuses(REPO, SHA, "ctx/a")
    assert statuses.parse(posted)[:2] == ("queued", 1)
    channel = broker.channel()
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert properties.message_id == job_id(REPO, SHA, "ctx/a", 1)
    assert json.loads(body)["report"] == {"github": {"context": "ctx/a", "attempt": 1}}

    # the same delivery again, then a /retest comment: the first queues nothing, the second attempt 2
    fake_github.post_status(REPO, SHA, "failure", "ctx/a", description=statuses.describe("failure", 1, reason="x"))
    again = run_playbook(tmp_path, collections_path, job, config)
    assert again.returncode == 0 and "queued []" in again.stdout, again.stdout
    retest = dict(job, args={"trigger": "issue_comment", "commands": [
        {"command": "retest", "contexts": [], "user": "maint"}]})
    retested = run_playbook(tmp_path, collections_path, retest, config)
    assert retested.returncode == 0 and "issue_comment: 1 commit(s) scanned; queued ['ctx/a']" in retested.stdout
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    assert properties.message_id == job_id(REPO, SHA, "ctx/a", 2)
    assert channel.basic_get(queue)[0] is None
