"""The module wrapper (module_utils/module.py): option families, their clients, the failure path."""

import json
import socket

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.forge.client import ForgeError
from ansible_collections.testfleet.infra.plugins.module_utils.jobs import JobError
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule

SECRET = "pa%2Fss-w0rd"  # "pa/ss-w0rd" once decoded


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_module(args, families=("amqp",), **spec):
    with patch_module_args(args):
        return AnsibleTestfleetModule(argument_spec=spec, families=families, supports_check_mode=True)


def outcome(capsys, args, action, families=("amqp",)):
    """The result of a module that fails in ``action(module)``."""
    with patch_module_args(args), pytest.raises(SystemExit):
        module = AnsibleTestfleetModule(argument_spec={}, families=families)
        action(module)
    return json.loads(capsys.readouterr().out)


def connect_outcome(capsys, args):
    """The result of a module whose connect() fails."""
    def connect(module):
        with module.reporting():
            module.connect()
    return outcome(capsys, args, connect)


def test_the_common_options_and_their_defaults():
    module = make_module({"queue": "q"}, queue=dict(type="str"))
    assert module.params == {
        "url": "amqp://127.0.0.1:5672/", "ca_file": None, "cert_file": None, "key_file": None,
        "password_file": None, "heartbeat": 60, "connect_timeout": 10.0, "queue": "q"}


def test_families_combine_and_a_module_may_be_several():
    module = make_module({"token": "gh-token-0123", "repo": "o/r"}, families=("amqp", "forge", "config"), repo=dict(type="str"))
    assert {"url", "password_file", "api_url", "token", "token_file", "etag_cache_dir", "config", "repo"} <= set(
        module.params)
    assert module.config is None


def test_two_families_may_not_define_one_option():
    with pytest.raises(ValueError, match="timeout"):
        make_module({}, families=("forge", "image_store"))


def test_settings_come_from_the_params(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("x")
    module = make_module({"url": "amqp://worker@broker/ci", "password_file": str(password_file),
                          "heartbeat": 5, "connect_timeout": 2})
    settings = module.amqp_settings()
    assert (settings.url, settings.password_file, settings.heartbeat, settings.connect_timeout) == (
        "amqp://worker@broker/ci", str(password_file), 5, 2.0)


def test_a_config_file_stands_for_the_amqp_and_forge_options(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("amqp:\n  url: amqp://cfg@broker/ci\nforge:\n  api_url: http://127.0.0.1:1/api\n"
                      "  token_file: /etc/token\nworker:\n  work_dir: %s\n" % tmp_path)
    module = make_module({"config": str(config)}, families=("amqp", "forge", "config"))
    assert module.amqp_settings().url == "amqp://cfg@broker/ci"
    settings = module.forge_settings()
    assert (settings["api_url"], settings["token_file"], settings["etag_cache_dir"]) == (
        "http://127.0.0.1:1/api", "/etc/token", str(tmp_path / "forge-cache"))


def test_a_config_file_without_credentials_is_a_forge_error(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("amqp:\n  url: amqp://broker/\n")
    module = make_module({"config": str(config)}, families=("forge", "config"))
    with pytest.raises(ForgeError, match="forge.token_file is required"):
        module.forge_settings()


def test_a_bad_config_file_fails_the_module(capsys, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("amqp:\n  colour: blue\n")
    result = outcome(capsys, {"config": str(config)}, lambda module: None, families=("forge", "config"))
    assert result["failed"] is True and "amqp: unknown key 'colour'" in result["msg"]


def test_forge_credentials_exactly_one(capsys):
    result = outcome(capsys, {"token": "gh-token-0123", "token_file": "/x"}, lambda module: None, families=("forge", "config"))
    assert "mutually exclusive: token|token_file|app_id|config" in result["msg"]
    result = outcome(capsys, {}, lambda module: None, families=("forge",))
    assert "one of the following is required: token, token_file, app_id" in result["msg"]


def test_a_connection_error_fails_the_module_without_the_password(capsys, closed_port):
    result = connect_outcome(capsys, {"url": "amqp://user:%s@127.0.0.1:%d/" % (SECRET, closed_port)})
    assert result["failed"] is True
    assert result["error"] == "BrokerUnreachable"
    assert result["msg"].startswith("cannot reach the broker at amqp://user:********@127.0.0.1:%d/" % closed_port)
    text = json.dumps(result)
    assert SECRET not in text and "pa/ss-w0rd" not in text
    assert result["invocation"]["module_args"]["url"] == "amqp://user:********@127.0.0.1:%d/" % closed_port


def test_an_invalid_url_fails_cleanly(capsys):
    result = connect_outcome(capsys, {"url": "amqp://user:%s@host:port/" % SECRET})
    assert result["msg"] == "AMQP URL amqp://user:********@host:port/ has an invalid port"


def test_without_pika_the_module_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setattr(amqp, "HAS_PIKA", False)
    monkeypatch.setattr(amqp, "PIKA_IMPORT_ERROR", ImportError("No module named 'pika'"))
    result = connect_outcome(capsys, {})
    assert "Failed to import the required Python library (pika)" in result["msg"]


def test_the_publisher_connects_when_first_ready(capsys, closed_port):
    module = make_module({"url": "amqp://127.0.0.1:%d/" % closed_port})
    publisher = module.publisher()
    publisher.close()  # never connected: nothing to close
    with pytest.raises(amqp.BrokerUnreachable):
        publisher.ready()


def test_the_failure_path_names_what_the_error_names(capsys):
    def fail(error, **result):
        return outcome(capsys, {}, lambda module: module.fail(error, **result), families=())
    forge = fail(ForgeError("GitHub said no", status=422), changed=False)
    assert (forge["msg"], forge["http_status"], forge["changed"]) == ("GitHub said no", 422, False)
    job = fail(JobError("sha", "must be a commit"))
    assert job["field"] == "sha" and "sha" in job["msg"]
    broker = fail(amqp.BrokerUnreachable("cannot reach the broker"))
    assert broker["error"] == "BrokerUnreachable"
    other = fail(ValueError("plain"))
    assert other["msg"] == "plain" and "error" not in other


def test_reporting_fails_with_the_result_as_it_is_then(capsys):
    def act(module):
        result = {"done": 0}
        with module.reporting(result):
            result["done"] = 2
            raise ForgeError("broke", status=502)
    result = outcome(capsys, {}, act, families=())
    assert (result["failed"], result["done"], result["http_status"]) == (True, 2, 502)


def test_a_secret_key_file_is_read_and_hidden(capsys, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-value\n")

    def act(module):
        with module.reporting():
            module.image_store()
    result = outcome(capsys, {"store_url": "s3://bucket/images", "secret_key_file": str(secret_file)}, act,
                     families=("image_store",))
    assert result["msg"] == "access_key and one of secret_key, secret_key_file go together"
    missing = outcome(capsys, {"store_url": "s3://bucket/images", "access_key": "k",
                               "secret_key_file": str(tmp_path / "none")}, act, families=("image_store",))
    assert missing["msg"].startswith("cannot read the S3 secret key file %s" % (tmp_path / "none"))
    local = outcome(capsys, {"store_url": str(tmp_path), "region": "x"}, act, families=("image_store",))
    assert local["msg"] == "region: only for an s3:// store_url"
