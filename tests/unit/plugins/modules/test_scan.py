"""The scan module, in-process, against the fake GitHub (tests/fake_github/) and the real broker.

What the module adds to the Scanner (whose decisions are tested without a broker in
tests/unit/plugins/module_utils/scan/test_scanner.py): its options and their checks, the config
file, the confirmed publisher on the real broker, the scan state on disk, and how failures are
reported. Every test declares its own queues (unique names, through topology.ensure_queue) and
deletes them afterwards; the messages the module published are read back from them.
"""

import json
import uuid

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp

from ansible_collections.testfleet.infra.plugins.module_utils import statuses
from ansible_collections.testfleet.infra.plugins.module_utils.scan.plan import job_id
from ansible_collections.testfleet.infra.plugins.module_utils.topology import ensure_queue, expand

REPO = "org/proj"
SHA = "1" * 40
SHA2 = "2" * 40
MAIN_SHA = "3" * 40


class Broker:
    """Unique queues ``public`` and ``internal`` on a unique exchange, and reading them back."""

    def __init__(self, settings):
        self.prefix = "tftest-scan-%s." % uuid.uuid4().hex[:8]
        self.public, self.internal = self.prefix + "public", self.prefix + "internal"
        self.description = {"exchange": self.prefix + "jobs", "dead_letter_exchange": self.prefix + "dlx",
                            "dead_letter_queue": self.prefix + "dead-letter", "queues": [self.public, self.internal]}
        self.exchange = self.description["exchange"]
        self.connection = amqp.connect(settings, attempts=10, retry_delay=1.0)
        channel = self.connection.channel()
        for name in (self.public, self.internal):
            ensure_queue(channel, self.description, name)
        channel.close()

    def take(self, queue):
        """Every message in ``queue`` (acked): [(message_id, job)]."""
        channel = self.connection.channel()
        messages = []
        while True:
            method, properties, body = channel.basic_get(queue)
            if method is None:
                break
            channel.basic_ack(method.delivery_tag)
            messages.append((properties.message_id, json.loads(body)))
        channel.close()
        return messages

    def delete(self):
        channel = self.connection.channel()
        topology = expand(self.description)
        for queue in topology["queues"]:
            channel.queue_delete(queue["name"])
        for exchange in topology["exchanges"]:
            channel.exchange_delete(exchange["name"])
        self.connection.close()


@pytest.fixture
def broker(amqp_settings):
    queues = Broker(amqp_settings)
    yield queues
    queues.delete()


@pytest.fixture
def scan(run_module, github, broker, testmap, amqp_options, tmp_path):
    """Run the module with the test's GitHub, broker and test map; extra options as keywords."""
    def run(check_mode=False, diff=False, **options):
        args = dict(amqp_options, api_url=github.url, token=github.token, testmap=testmap,
                    exchange=broker.exchange, etag_cache_dir=str(tmp_path / "etags"), retries=0)
        args.update(options)
        return run_module("scan", args, check_mode=check_mode, diff=diff)
    return run


def test_a_first_scan_queues_each_context_once_and_a_rescan_nothing(scan, github, broker):
    # The module around the Scanner (module_utils/scan/test_scanner.py tests its decisions):
    # options in, jobs out through the real broker with their ids, statuses posted, a result.
    github.add_pull(REPO, 4, SHA, author="alice", author_association="NONE")
    result = scan(repo=REPO)
    assert "failed" not in result, result
    assert result["changed"] is True
    public, internal = broker.take(broker.public), broker.take(broker.internal)
    assert [m[0] for m in public] == [job_id(REPO, SHA, "ctx/a", 1)]
    assert [m[0] for m in internal] == [job_id(REPO, SHA, "ctx/b", 1)]
    assert public[0][1]["report"] == {"github": {"context": "ctx/a", "attempt": 1}}
    assert [statuses.parse(s).kind for s in github.statuses(REPO, SHA)] == ["queued", "queued"]
    assert result["requests"]["writes"] == 2

    again = scan(repo=REPO)
    assert again["changed"] is False and again["queued"] == []
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []
    assert len(github.statuses(REPO, SHA)) == 2


def test_the_queued_status_is_posted_before_the_job_is_published(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    github.inject("POST", r"/statuses/", 422, body={"message": "Validation Failed"})
    result = scan(repo=REPO, pull=4)
    assert result["failed"] is True and result["http_status"] == 422
    # the status of the first context could not be posted: its job was not published either
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []
    assert result["queued"] == []


def test_check_mode_plans_without_posting_or_publishing(scan, github, broker):
    github.add_pull(REPO, 4, SHA)
    result = scan(check_mode=True, diff=True, repo=REPO)
    assert result["changed"] is True
    assert [(a["kind"], a["context"], a["attempt"]) for a in result["plan"][0]["actions"]] == [
        ("queue", "ctx/a", 1), ("queue", "ctx/b", 1)]
    assert result["queued"] == []
    assert github.statuses(REPO, SHA) == []
    assert broker.take(broker.public) == [] and broker.take(broker.internal) == []
    key = "%s@%s ctx/a" % (REPO, SHA)
    assert result["diff"]["before"][key] is None
    assert result["diff"]["after"][key].startswith("queued · attempt 1 · deadline ")


def test_settings_from_a_config_file(run_module, github, broker, testmap, amqp_options, tmp_path):
    token_file = tmp_path / "github-token"
    token_file.write_text(github.token + "\n")
    config = tmp_path / "config.yml"
    amqp_lines = "\n".join("  %s: %s" % (k, v) for k, v in sorted(amqp_options.items()))
    config.write_text("amqp:\n%s\nforge:\n  api_url: %s\n  token_file: %s\ntestmap: %s\ntopology: %s\n" % (
        amqp_lines, github.url, token_file, testmap, json.dumps(broker.description)))
    github.add_pull(REPO, 4, SHA)
    result = run_module("scan", {"config": str(config), "repo": REPO})
    assert "failed" not in result, result
    assert len(result["queued"]) == 2
    assert len(broker.take(broker.public)) == 1 and len(broker.take(broker.internal)) == 1
    assert github.token not in json.dumps(result)


def test_a_job_that_cannot_be_published_gets_an_error_status(scan, github, broker, testmap):
    with open(testmap) as handle:
        text = handle.read()
    with open(testmap, "w") as handle:
        handle.write(text.replace(broker.internal, broker.prefix + "missing"))
    github.add_pull(REPO, 4, SHA)
    github.post_status(REPO, SHA, "success", "ctx/a", description=statuses.describe("success", 1))
    result = scan(repo=REPO, pull=4)
    assert result["failed"] is True and result["changed"] is True
    assert result["msg"].startswith("the test job could not be published: no queue is bound to exchange")
    posted = github.statuses(REPO, SHA, "ctx/b")
    assert [statuses.parse(p).kind for p in posted] == ["queued", "error"]
    assert statuses.parse(posted[-1]).reason.startswith("the test job could not be published")


def test_an_unreachable_broker_posts_no_queued_status(scan, github):
    github.add_pull(REPO, 4, SHA)
    result = scan(repo=REPO, url="amqp://127.0.0.1:1/", password_file=None)
    assert result["failed"] is True and result["error"] == "BrokerUnreachable"
    assert github.statuses(REPO, SHA) == []


def test_github_errors_fail_clearly(scan, github):
    github.add_pull(REPO, 4, SHA)
    github.inject("GET", r"/commits/.*/status$", 404)
    result = scan(repo=REPO, pull=4)
    assert result["failed"] is True and result["http_status"] == 404
    assert github.token not in json.dumps(result)


@pytest.mark.parametrize("options, message", [
    ({"repo": "not-a-repo"}, "repo must be a GitHub repository as 'owner/name', not 'not-a-repo'"),
    ({"repo": REPO, "sha": "abc"}, "sha must be a full commit hash"),
    ({"repo": REPO, "ref": "refs/tags/v1"}, "ref must be a branch (main or refs/heads/main), not 'refs/tags/v1'"),
    ({"repo": REPO, "commands": [{"command": "retest", "user": "x"}]},
     "commands apply to one pull request (pull) or one branch (ref)"),
    ({"repo": REPO, "pull": 4, "commands": [{"command": "retest", "user": "x", "created_at": "yesterday"}]},
     "commands: created_at must be an ISO 8601 time"),
    ({"pull": 4}, "missing parameter(s) required by 'pull': repo"),
    ({"repo": REPO, "pull": 4, "sha": SHA}, "parameters are mutually exclusive: pull|sha"),
])
def test_bad_options_fail_before_anything_is_read(scan, github, options, message):
    result = scan(**options)
    assert result["failed"] is True
    assert message in result["msg"]
    assert github.requests == []


def test_a_bad_test_map_is_reported_with_its_key_path(scan, github, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("repos:\n  org/proj:\n    branches:\n      main: [{context: a, queu: x}]\n")
    result = scan(repo=REPO, testmap=str(bad))
    assert result["failed"] is True
    assert result["msg"] == "%s: repos.org/proj.branches.main[0].queu: unknown key (did you mean 'queue'?)" % bad
