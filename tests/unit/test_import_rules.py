"""The collection's import rules (docs: DESIGN's layout table), checked on every Python file.

A floor may import the collection's code below it, never above it:

================================ ==============================================================
file under                       may import from the collection
================================ ==============================================================
``plugins/module_utils/``        ``plugins/module_utils`` only (AnsiballZ ships what modules
                                 import: nothing of the controller, no program)
``plugins/modules/``             ``plugins/module_utils``
``plugins/plugin_utils/``        ``plugins/module_utils``, ``plugins/plugin_utils`` (no program)
``plugins/<other>/`` (callback)  ``plugins/module_utils``, ``plugins/plugin_utils``
``programs/``, ``bin/``,         anything of the collection
``bench/``
================================ ==============================================================

and none of them imports ``tests/`` (``ansible_collections.testfleet.infra.tests``, ``tests.``,
or a module of ``tests/`` by its plain name, such as ``fake_github`` or ``conftest``).

An import is an ``import`` or ``from`` statement (relative ones resolved), or
``importlib.import_module``/``__import__`` with a constant name. Reading a file of ``tests/``
by its path is not an import (``bench/`` sends the webhook fixtures and starts the fake GitHub
from ``tests/``).
"""

import ast
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
COLLECTION = "ansible_collections.testfleet.infra"
CHECKED = ("plugins", "programs", "bin", "bench")
MODULE_UTILS = "plugins.module_utils"
PLUGIN_UTILS = "plugins.plugin_utils"
ANYTHING = None


def allowed_for(relative):
    """What a file at ``relative`` (a path below the collection root) may import: a tuple of
    dotted prefixes of the collection, or ANYTHING."""
    parts = relative.parts
    if parts[0] != "plugins":
        return ANYTHING
    if parts[1] in ("module_utils", "modules"):
        return (MODULE_UTILS,)
    return (MODULE_UTILS, PLUGIN_UTILS)


def python_files():
    for top in CHECKED:
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if not path.is_file() or path.is_symlink() or "__pycache__" in path.parts:
                continue
            if path.suffix == ".py" or (path.suffix == "" and path.read_bytes()[:64].startswith(b"#!")
                                        and b"python" in path.read_bytes().split(b"\n", 1)[0]):
                yield path


def _test_module_names():
    """The plain names under which a module of ``tests/`` could be imported (pytest puts the
    test folders on sys.path; conftest loads the fake GitHub as ``fake_github``)."""
    names = set()
    for path in (REPO_ROOT / "tests").rglob("*.py"):
        names.add(path.stem if path.name != "__init__.py" else path.parent.name)
    names.discard("__init__")
    return names


TEST_MODULES = _test_module_names()


def _package(relative):
    """The package of a file, as a list of names (the folder of a module or of an __init__)."""
    return list(relative.parts[:-1])


def imported_names(source, relative):
    """``(line, dotted name)`` of each import in ``source``; names inside the collection are
    made absolute (``ansible_collections.testfleet.infra.X``)."""
    tree = ast.parse(source, str(relative))
    package = [COLLECTION] + _package(relative)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                module = base + ("." + node.module if node.module else "")
            else:
                module = node.module or ""
            for alias in node.names:
                yield node.lineno, module if alias.name == "*" else module + "." + alias.name
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def problem(name, allowed):
    """Why importing ``name`` breaks the rules (None when it does not)."""
    first = name.split(".")[0]
    if name == "tests" or name.startswith("tests.") or first in TEST_MODULES \
            or name.startswith(COLLECTION + ".tests"):
        return "imports %s, which is test code (tests/)" % name
    if allowed is ANYTHING or not name.startswith(COLLECTION + "."):
        return None
    inside = name[len(COLLECTION) + 1:]
    if any(inside == prefix or inside.startswith(prefix + ".") for prefix in allowed):
        return None
    return "imports %s; it may import only %s of the collection" % (
        inside, " and ".join(p.replace(".", "/") for p in allowed))


def violations(source, relative):
    allowed = allowed_for(relative)
    found = []
    for line, name in imported_names(source, relative):
        why = problem(name, allowed)
        if why:
            found.append("%s:%d: %s" % (relative, line, why))
    return found


def test_every_file_keeps_the_import_rules():
    found = []
    files = list(python_files())
    assert len(files) > 50, "found only %d files to check under %s" % (len(files), REPO_ROOT)
    for path in files:
        found += violations(path.read_text(encoding="utf-8"), path.relative_to(REPO_ROOT))
    assert not found, "import rules broken (see tests/unit/test_import_rules.py):\n" + "\n".join(found)


@pytest.mark.parametrize("relative,source,expected", [
    ("plugins/module_utils/x.py",
     "from ansible_collections.testfleet.infra.plugins.plugin_utils import events",
     "plugins/module_utils/x.py:1: imports plugins.plugin_utils.events; it may import only plugins/module_utils"),
    ("plugins/module_utils/forge/x.py", "import os\nfrom ...plugin_utils.logstore import store",
     "plugins/module_utils/forge/x.py:2: imports plugins.plugin_utils.logstore.store"),
    ("plugins/module_utils/x.py", "from ansible_collections.testfleet.infra import programs",
     "imports programs; it may import only plugins/module_utils"),
    ("plugins/modules/m.py", "from ansible_collections.testfleet.infra.programs.cli import commands",
     "plugins/modules/m.py:1: imports programs.cli.commands"),
    ("plugins/modules/m.py", "import ansible_collections.testfleet.infra.plugins.plugin_utils.job_report",
     "imports plugins.plugin_utils.job_report; it may import only plugins/module_utils"),
    ("plugins/plugin_utils/p.py", "import importlib\n\nimportlib.import_module("
     "'ansible_collections.testfleet.infra.programs.worker.job')",
     "plugins/plugin_utils/p.py:3: imports programs.worker.job; it may import only plugins/module_utils "
     "and plugins/plugin_utils"),
    ("plugins/callback/job_log.py", "from ..plugin_utils import events\nfrom ...programs import prometheus",
     "plugins/callback/job_log.py:2: imports programs.prometheus"),
    ("programs/worker/job.py", "import fake_github", "programs/worker/job.py:1: imports fake_github, which is test code"),
    ("bench/b.py", "from tests.integration import broker", "imports tests.integration.broker, which is test code"),
    ("bin/testfleet", "from ansible_collections.testfleet.infra.tests.unit import conftest", "which is test code"),
])
def test_a_broken_rule_names_the_file_and_the_import(relative, source, expected):
    found = violations(source, pathlib.PurePosixPath(relative))
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("relative,source", [
    ("plugins/module_utils/scan/plan.py", "from ..jobs import make_job\nfrom . import state\n"
     "from ansible.module_utils.basic import AnsibleModule"),
    ("plugins/callback/job_log.py", "from ansible_collections.testfleet.infra.plugins.plugin_utils import events"),
    ("plugins/plugin_utils/logstore/store.py", "from ...module_utils import files"),
    ("programs/cli/commands.py", "from ansible_collections.testfleet.infra.plugins.plugin_utils.logstore import store"),
    ("bench/scan.py", "import importlib.util\nimport broker_lib"),
])
def test_allowed_imports_pass(relative, source):
    assert violations(source, pathlib.PurePosixPath(relative)) == []
