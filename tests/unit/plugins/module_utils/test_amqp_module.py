import json
import socket

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils.amqp_module import AmqpModule

SECRET = "pa%2Fss-w0rd"  # "pa/ss-w0rd" once decoded


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_module(args, **spec):
    with patch_module_args(args):
        return AmqpModule(argument_spec=spec, supports_check_mode=True)


def connect_outcome(capsys, args):
    """The result of a module whose connect() fails."""
    with patch_module_args(args), pytest.raises(SystemExit):
        AmqpModule(argument_spec={}).connect()
    return json.loads(capsys.readouterr().out)


def test_the_common_options_and_their_defaults():
    module = make_module({"queue": "q"}, queue=dict(type="str"))
    assert module.params == {
        "url": "amqp://127.0.0.1:5672/", "ca_file": None, "cert_file": None, "key_file": None,
        "password_file": None, "heartbeat": 60, "connect_timeout": 10.0, "queue": "q"}


def test_settings_come_from_the_params(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text("x")
    module = make_module({"url": "amqp://worker@broker/ci", "password_file": str(password_file),
                          "heartbeat": 5, "connect_timeout": 2})
    settings = module.amqp_settings()
    assert (settings.url, settings.password_file, settings.heartbeat, settings.connect_timeout) == (
        "amqp://worker@broker/ci", str(password_file), 5, 2.0)


def test_a_connection_error_fails_the_module_without_the_password(capsys, closed_port):
    result = connect_outcome(capsys, {"url": "amqp://user:%s@127.0.0.1:%d/" % (SECRET, closed_port)})
    assert result["failed"] is True
    assert result["error"] == "BrokerUnreachable"
    assert result["msg"].startswith("cannot reach the broker at amqp://user:***@127.0.0.1:%d/" % closed_port)
    text = json.dumps(result)
    assert SECRET not in text and "pa/ss-w0rd" not in text
    assert result["invocation"]["module_args"]["url"] == "amqp://user:********@127.0.0.1:%d/" % closed_port


def test_an_invalid_url_fails_cleanly(capsys):
    result = connect_outcome(capsys, {"url": "amqp://user:%s@host:port/" % SECRET})
    assert result["msg"] == "AMQP URL amqp://user:***@host:port/ has an invalid port"


def test_without_pika_the_module_says_what_to_install(capsys, monkeypatch):
    monkeypatch.setattr(amqp, "HAS_PIKA", False)
    monkeypatch.setattr(amqp, "PIKA_IMPORT_ERROR", ImportError("No module named 'pika'"))
    result = connect_outcome(capsys, {})
    assert "Failed to import the required Python library (pika)" in result["msg"]
