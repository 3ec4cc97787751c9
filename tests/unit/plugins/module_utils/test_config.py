import os

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import config
from ansible_collections.testfleet.infra.plugins.module_utils.amqp import AmqpSettings
from ansible_collections.testfleet.infra.plugins.module_utils.config import ConfigError

DESIGN_EXAMPLE = """\
amqp:
  url: amqps://broker.example.org:5671/testfleet     # amqp://127.0.0.1:5672/ locally
  ca_file: /etc/testfleet/ca.pem
  cert_file: /etc/testfleet/worker-1.pem
  key_file: /etc/testfleet/worker-1.key
webhook:
  listen: 127.0.0.1:8080
  secret_files: [/etc/testfleet/webhook-secret]
worker:
  queues: [tests.public]
  slots: 2
  default_timeout: 7200
log_store:
  url: s3://ci-logs/logs
  endpoint_url: https://s3.example.org
  public_url: https://logs.example.org/logs
forge:
  api_url: https://api.github.com
  token_file: /etc/testfleet/github-token
testmap: /etc/testfleet/testmap.yml
"""


def write(tmp_path, text, name="config.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(data, path="/etc/testfleet/config.yml"):
    with pytest.raises(ConfigError) as raised:
        config.validate(data, path)
    return str(raised.value)


def test_the_design_example_loads(tmp_path, monkeypatch):
    # The TLS files of the example do not exist here; AmqpSettings checks they are readable.
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    loaded = config.load(write(tmp_path, DESIGN_EXAMPLE))
    assert loaded.amqp["url"] == "amqps://broker.example.org:5671/testfleet"
    assert loaded.section("webhook")["secret_files"] == ["/etc/testfleet/webhook-secret"]
    worker = loaded.section("worker")
    assert (worker["queues"], worker["slots"], worker["default_timeout"]) == (["tests.public"], 2, 7200)
    assert (worker["work_dir"], worker["drain_timeout"], worker["retry_delay"]) == ("/var/lib/testfleet/work", None, 10.0)
    assert loaded.section("log_store")["endpoint_url"] == "https://s3.example.org"
    assert loaded.section("forge")["token_file"] == "/etc/testfleet/github-token"
    assert loaded.testmap == "/etc/testfleet/testmap.yml"
    settings = loaded.amqp_settings(connection_name="test")
    assert isinstance(settings, AmqpSettings)
    assert (settings.cert_file, settings.connection_name) == ("/etc/testfleet/worker-1.pem", "test")


def test_defaults_of_an_empty_file(tmp_path):
    loaded = config.load(write(tmp_path, ""))
    assert loaded.amqp == {"url": "amqp://127.0.0.1:5672/", "ca_file": None, "cert_file": None,
                           "key_file": None, "password_file": None, "heartbeat": 60}
    webhook = loaded.webhook
    assert (webhook["listen"], webhook["path"], webhook["allow_sha1"], webhook["queue"]) == (
        "127.0.0.1:8080", "/webhook", False, "events")
    assert webhook["max_body_bytes"] == 25 * 1024 * 1024
    assert webhook["events"] == config.DEFAULT_EVENTS
    assert webhook["events"] is not config.DEFAULT_EVENTS  # a copy: callers may change theirs
    assert webhook["events"]["pull_request"] == ["opened", "synchronize", "reopened", "closed",
                                                 "ready_for_review", "labeled"]
    assert loaded.testmap is None and loaded.topology == {}


def test_a_program_asks_for_the_keys_it_requires(tmp_path):
    loaded = config.load(write(tmp_path, "amqp: {}\n"))
    with pytest.raises(ConfigError, match=r"config.yml: webhook.secret_files is required \(the file has no webhook section\)"):
        loaded.section("webhook")
    for section, key in (("worker", "queues"), ("log_store", "url"), ("forge", "token_file")):
        with pytest.raises(ConfigError, match=r"%s\.%s is required" % (section, key)):
            loaded.section(section)
    loaded.section("amqp")  # nothing required


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    loaded = config.load(write(tmp_path, "webhook: {secret_files: [secret, /abs/other]}\n"
                                         "testmap: maps/testmap.yml\n"))
    assert loaded.webhook["secret_files"] == [str(tmp_path / "secret"), "/abs/other"]
    assert loaded.testmap == str(tmp_path / "maps" / "testmap.yml")


@pytest.mark.parametrize("data, message", [
    ({"webhok": {}}, "unknown section 'webhok' (did you mean 'webhook'?)"),
    ({"amqp": {"urll": "amqp://x/"}}, "amqp: unknown key 'urll' (did you mean 'url'?)"),
    ({"webhook": {"secret": "hunter2"}}, "webhook: unknown key 'secret' (did you mean 'secret_files'?)"),
    ({"forge": {"github_password": "x"}}, "secrets are never written in the config file"),
    ({"worker": {"zzz": 1}}, "known: clone_url, default_timeout, drain_timeout"),
    ({"worker": {"queues": ["tests.public"], "drain_timeout": 0}}, "worker.drain_timeout must be a positive number of seconds (at most 604800), not 0"),
    ({"worker": {"queues": ["tests.public"], "retry_delay": -1}}, "worker.retry_delay must be a number of seconds, 0 or more"),
    ({"webhook": []}, "webhook: must be a mapping of keys, not a list"),
    ({"webhook": {"listen": "8080"}}, "webhook.listen must be 'host:port'"),
    ({"webhook": {"listen": "localhost:99999"}}, "webhook.listen must be 'host:port'"),
    ({"webhook": {"path": "webhook"}}, "webhook.path must be a URL path starting with '/'"),
    ({"webhook": {"secret_files": "/etc/secret"}}, "webhook.secret_files must be a list of file paths (write [/etc/secret] for one file)"),
    ({"webhook": {"secret_files": []}}, "webhook.secret_files must be a non-empty list"),
    ({"webhook": {"secret_files": ["a", 3]}}, "webhook.secret_files item 2 must be a non-empty string, not an integer"),
    ({"webhook": {"allow_sha1": "yes please"}}, "webhook.allow_sha1 must be true or false, not a string"),
    ({"webhook": {"max_body_bytes": 0}}, "webhook.max_body_bytes must be a positive integer (at most 1073741824), not 0"),
    ({"webhook": {"max_body_bytes": True}}, "webhook.max_body_bytes must be a positive integer (at most 1073741824), not a boolean"),
    ({"webhook": {"events": ["push"]}}, "webhook.events must be a mapping of event name"),
    ({"webhook": {"events": {"Push": None}}}, "webhook.events has an invalid event name 'Push'"),
    ({"webhook": {"events": {"push": "opened"}}}, "webhook.events push: must be a list of actions"),
    ({"webhook": {"queue": "no spaces"}}, "webhook.queue must be an AMQP name"),
    ({"webhook": {"queue": "tests.public.x"}}, "webhook.queue: 'tests.public.x' is not a work queue of the topology"),
    ({"webhook": {"publish_timeout": 0}}, "webhook.publish_timeout must be a positive number of seconds (at most 3600), not 0"),
    ({"webhook": {"tls_cert_file": "/etc/cert.pem"}}, "tls_cert_file and tls_key_file go together"),
    ({"worker": {"queues": ["tests.public"], "slots": 0}}, "worker.slots must be a positive integer (at most 1024), not 0"),
    ({"worker": {"queues": ["nope"]}}, "worker.queues: 'nope' is not a work queue of the topology"),
    ({"log_store": {"url": "ftp://x/logs"}}, "log_store.url must be a URL starting with s3:// or file://"),
    ({"forge": {"api_url": "api.github.com"}}, "forge.api_url must be a URL starting with http:// or https://"),
    ({"amqp": {"url": "http://user:pw@broker/"}}, "amqp.url must be a URL starting with amqp:// or amqps://, not http://user:********@broker/"),
    ({"amqp": {"url": "amqp://broker/", "ca_file": "/nonexistent/ca.pem"}}, "amqp: ca_file /nonexistent/ca.pem does not exist"),
    ({"amqp": {"heartbeat": -1}}, "amqp.heartbeat must be an integer, 0 or more (at most 3600), not -1"),
    ({"topology": {"queues": "events"}}, "topology is not a valid topology description: queues must be a non-empty list"),
    ({"topology": {"exchange": "x", "queues": ["a"]}, "webhook": {"queue": "events"}}, "'events' is not a work queue"),
    ({"testmap": 3}, "testmap must be a non-empty string, not an integer"),
])
def test_errors_name_the_file_the_section_and_the_key(data, message):
    error = error_of(data)
    assert error.startswith("/etc/testfleet/config.yml: ")
    assert message in error


def test_errors_never_show_secrets():
    assert "hunter2" not in error_of({"webhook": {"secret": "hunter2"}})
    assert "hunter2" not in error_of({"amqp": {"url": "https://user:hunter2@broker/"}})
    assert "hunter2" not in error_of({"forge": {"token_file": ["hunter2"], "api_url": 1}})


def test_yaml_problems(tmp_path):
    with pytest.raises(ConfigError, match=r"config.yml: line 3: the key 'listen' is given twice"):
        config.load(write(tmp_path, "webhook:\n  listen: 1.2.3.4:80\n  listen: 1.2.3.4:81\n"))
    with pytest.raises(ConfigError, match=r"config.yml: line \d+ column \d+ is not valid YAML"):
        config.load(write(tmp_path, "webhook:\n  listen: [\n"))
    with pytest.raises(ConfigError, match=r"must hold a mapping of sections"):
        config.load(write(tmp_path, "- amqp\n"))
    with pytest.raises(ConfigError, match=r"cannot read the config file .*missing.yml"):
        config.load(str(tmp_path / "missing.yml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write(tmp_path, "x: !!python/object:os.system {}\n"))


def test_listen_forms():
    assert config.parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert config.parse_listen("[::1]:443") == ("::1", 443)
    assert config.parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert config.parse_listen("webhook.example.org:80") == ("webhook.example.org", 80)
    for bad in ("::1:80", "host", "host:", ":80", "host:port", "[::1]80"):
        with pytest.raises(ValueError):
            config.parse_listen(bad)


def test_event_filter_values():
    events = {"push": None, "pull_request": ["opened"], "check_suite": []}
    assert config.validate({"webhook": {"events": events}}).webhook["events"] == events


def test_read_secret_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    assert config.read_secret_file(str(secret)) == b"s3cret"
    secret.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="the secret file .* is empty"):
        config.read_secret_file(str(secret))
    with pytest.raises(ConfigError, match="cannot read the webhook secret file .*nope"):
        config.read_secret_file(str(tmp_path / "nope"), "webhook secret")
