# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shipped inventories: they parse, and every role variable they set is one the role knows.

A misspelt role variable in an inventory is silently ignored by Ansible (the role's default
wins), so each ``rabbitmq_*``, ``webhook_*``, ``worker_*`` and ``collection_artifact_*`` key of
the inventories must be an option of that role's ``meta/argument_specs.yml``.
"""

import json
import pathlib
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
INVENTORIES = sorted(p for p in (REPO / "inventories").iterdir() if (p / "hosts.yml").exists())
ROLES = ("rabbitmq", "webhook", "worker", "collection_artifact")


def _role_options(role):
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return set(specs["argument_specs"]["main"]["options"])


def _variables(inventory):
    """(file, key) of every variable the inventory sets in group_vars, host_vars and hosts.yml."""
    found = []
    for path in sorted(inventory.rglob("*.yml")):
        data = yaml.safe_load(path.read_text()) or {}
        if path.name == "hosts.yml":
            stack = [data]
            while stack:
                node = stack.pop()
                if isinstance(node, dict):
                    for key, value in node.items():
                        if key in ("vars",) and isinstance(value, dict):
                            found += [(path, k) for k in value]
                        elif key == "hosts" and isinstance(value, dict):
                            found += [(path, k) for v in value.values() if isinstance(v, dict) for k in v]
                        else:
                            stack.append(value)
        else:
            found += [(path, key) for key in data]
    return found


def test_every_inventory_is_checked():
    assert {p.name for p in INVENTORIES} >= {"local", "e2e"}


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.name)
def test_inventory_parses_with_the_deploy_groups(inventory):
    out = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-inventory"), "-i", str(inventory), "--list"], check=True,
                         stdin=subprocess.DEVNULL,
                         capture_output=True, text=True).stdout
    groups = json.loads(out)
    for group in ("brokers", "webhooks", "workers"):
        assert groups[group]["hosts"], "%s has no hosts in %s" % (inventory.name, group)


@pytest.mark.parametrize("inventory", INVENTORIES, ids=lambda p: p.name)
def test_role_variables_are_role_options(inventory):
    options = {role: _role_options(role) for role in ROLES}
    unknown = []
    for path, key in _variables(inventory):
        role = next((r for r in ROLES if key.startswith(r + "_")), None)
        if role and key not in options[role]:
            unknown.append("%s: %s" % (path.relative_to(REPO), key))
    assert not unknown, "not options of their role's meta/argument_specs.yml: %s" % ", ".join(unknown)


def test_a_misspelt_variable_is_caught(tmp_path):
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "hosts.yml").write_text("all: {hosts: {h: {worker_slot: 2}}}\n")
    assert (tmp_path / "hosts.yml", "worker_slot") in _variables(tmp_path)
    assert "worker_slot" not in _role_options("worker")


def test_every_role_is_checked():
    assert set(ROLES) == {p.name for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").exists()}
