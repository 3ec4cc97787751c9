"""Shared fixtures: the collection made importable from this clone, and the test broker's settings.

At start-up a temporary ``ansible_collections/testfleet/infra`` symlink to the repository root
is created and put first on ``sys.path`` (so ``ansible_collections.testfleet.infra`` imports
from this checkout, wherever it is) and handed to ansible-playbook as its collections path.

The fake GitHub server (the package ``tests/fake_github/``) is loaded as the module ``fake_github``
(so tests may ``import fake_github`` too); the fixture ``fake_github`` is a running instance.
The fixture ``moto_server`` is a real moto_server (S3) on 127.0.0.1, stopped afterwards.

The broker comes from the environment: ``TESTFLEET_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/``) and optionally ``TESTFLEET_AMQP_PASSWORD_FILE``,
``TESTFLEET_AMQP_CA_FILE``, ``TESTFLEET_AMQP_CERT_FILE``, ``TESTFLEET_AMQP_KEY_FILE``.
"""

import contextlib
import importlib
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
AMQP_FILE_OPTIONS = ("password_file", "ca_file", "cert_file", "key_file")


def _make_collections_tree():
    """Done on import, before the conftest files below this one import the collection."""
    tree = tempfile.mkdtemp(prefix="testfleet-collections-")
    namespace = os.path.join(tree, "ansible_collections", "testfleet")
    os.makedirs(namespace)
    os.symlink(REPO_ROOT, os.path.join(namespace, "infra"))
    sys.path.insert(0, tree)
    return tree


_collections_tree = _make_collections_tree()


def _load_fake_github():
    """The package tests/fake_github as the module ``fake_github`` (one copy, whoever imports it)."""
    if "fake_github" not in sys.modules:
        package = REPO_ROOT / "tests" / "fake_github"
        spec = importlib.util.spec_from_file_location("fake_github", package / "__init__.py",
                                                      submodule_search_locations=[str(package)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["fake_github"] = module
        spec.loader.exec_module(module)
    return sys.modules["fake_github"]


_load_fake_github()


def pytest_unconfigure(config):
    sys.path.remove(_collections_tree)
    shutil.rmtree(_collections_tree)  # removes the symlink, not the repository


@pytest.fixture(scope="session")
def collections_path():
    """A directory holding ``ansible_collections/testfleet/infra`` (-> this repository)."""
    return _collections_tree


@pytest.fixture(scope="session")
def amqp_options():
    """The connection options of the test broker, as module options / AmqpSettings keys."""
    options = {"url": os.environ.get("TESTFLEET_AMQP_URL", DEFAULT_AMQP_URL)}
    for name in AMQP_FILE_OPTIONS:
        value = os.environ.get("TESTFLEET_AMQP_" + name.upper())
        if value:
            options[name] = value
    return options


@pytest.fixture(scope="session")
def amqp_settings(amqp_options):
    from ansible_collections.testfleet.infra.plugins.module_utils.amqp import AmqpSettings
    return AmqpSettings(connection_name="testfleet tests", **amqp_options)


@pytest.fixture
def fake_github():
    """A running, empty fake GitHub (``fake_github.FakeGitHub``): ``.url``, ``.token``, ``add_repo()``..."""
    with _load_fake_github().FakeGitHub() as server:
        yield server


@pytest.fixture
def moto_server():
    """A real moto_server (S3) on 127.0.0.1 and a free port: yields its endpoint URL."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(10)
                pytest.fail("moto_server did not start on port %d (exit status %s)" % (port, proc.returncode))
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def run_module(capsys):
    """Run a module of this collection in-process; return its result dict (as Ansible gets it).

    ``run_module("amqp_get", {...}, check_mode=True, diff=True)``. The result is the JSON the
    module printed (no_log masking applied), whether it exited or failed.
    """
    from ansible.module_utils.testing import patch_module_args

    def run(name, args, check_mode=False, diff=False):
        module = importlib.import_module("ansible_collections.testfleet.infra.plugins.modules." + name)
        args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff,
                    _ansible_module_name="testfleet.infra." + name)
        capsys.readouterr()
        with patch_module_args(args), pytest.raises(SystemExit):
            module.main()
        return json.loads(capsys.readouterr().out)

    return run
