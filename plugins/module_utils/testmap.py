# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test map: which test contexts run for which repository and branch, and who may trigger them.

The scanner (module ``scan``) and the operator CLI read it. Its format is documented in
``docs/testmap.md``; in short::

    defaults:                        # every key optional; these are the defaults
      queue: tests.public            # queue a context's test job goes to
      timeout: 7200                  # seconds a test job may run
      args: {}                       # arguments of every test job (a context's args add to them)
      queued_timeout: 86400          # seconds a "queued" status may wait for a worker
      max_attempts: 3                # runs of a context that ended in "error" before giving up
      skip_labels: [no-test]         # PRs with one of these labels are not tested
    allow:                           # PR authors whose PRs are tested without /approve
      authors: [alice]               # GitHub logins (case does not matter)
      orgs: [example]                # members of these organisations
      associations: [OWNER, MEMBER, COLLABORATOR]   # GitHub's author_association (default)
    repos:
      example/project:
        defaults: {timeout: 3600}    # per repository: replaces the global defaults' keys
        allow: {authors: [bob]}      # per repository: added to the global allow-list
        heads: true                  # also test the heads of the branches named exactly
        branches:                    # base branch (exact name or glob) -> contexts
          main:
            - debian-12/default
            - context: fedora-40/kvm
              queue: tests.internal
              timeout: 5400
              args: {command: [make, check]}
          "rhel-*": [centos-9/default]
        manual: [debian-12/expensive]   # run only on a /retest naming them (or by the operator)

A PR's contexts are those of its base branch: an exact branch name wins over patterns, else the
first pattern (``fnmatch``, in file order) that matches. Every problem is reported as
:class:`TestMapError` naming the file and the key path, for example
``testmap.yml: repos.org/proj.branches.main[2].queue: must be ...``; unknown keys are refused
with a did-you-mean hint.
"""

from __future__ import annotations

import collections
import copy
import difflib
import fnmatch
import re

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming
from ansible_collections.testfleet.infra.plugins.module_utils import jobs
from ansible_collections.testfleet.infra.plugins.module_utils import topology

DEFAULTS = {
    "queue": "tests.public",
    "timeout": 7200,
    "args": {},
    "queued_timeout": 86400,
    "max_attempts": 3,
    "skip_labels": ["no-test"],
}
# GitHub's author_association values (the relation of a PR's author to the repository).
ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR", "CONTRIBUTOR", "FIRST_TIME_CONTRIBUTOR",
                "FIRST_TIMER", "MANNEQUIN", "NONE")
DEFAULT_ASSOCIATIONS = ("OWNER", "MEMBER", "COLLABORATOR")
TOP_KEYS = ("defaults", "allow", "repos")
REPO_KEYS = ("defaults", "allow", "heads", "branches", "manual")
ALLOW_KEYS = ("authors", "orgs", "associations")
CONTEXT_KEYS = ("context", "queue", "timeout", "args", "image")
LOGIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$|^[A-Za-z0-9-]+\[bot\]$")
GLOB_CHARS = "*?["


class ContextSpec(collections.namedtuple("ContextSpec", "name queue timeout args manual image_name",
                                         defaults=(None,))):
    """One test context of a repository: where its job goes, how long it may run, its args.

    ``args`` is a dict (the job's ``args``); ``manual`` is True for a manual-only context;
    ``image_name`` is the VM image the context's key ``image`` names (None: see :attr:`image`).
    """

    __slots__ = ()

    @property
    def image(self):
        """The name of the VM image the context boots: its ``image`` key, else the first part
        of its name (``debian-12`` for ``debian-12/default``)."""
        return self.image_name or self.name.split("/", 1)[0]


class RepoPolicy(collections.namedtuple("RepoPolicy", "queued_timeout max_attempts skip_labels")):
    """The scanner's settings for one repository (its ``defaults`` over the global ones)."""

    __slots__ = ()


class TestMapError(ValueError):
    """A problem with the test map, worded as ``FILE: key.path: what is wrong``."""

    __test__ = False  # not a pytest test class, despite its name


class _Invalid(Exception):
    """Raised while checking; the parser adds the file name."""

    def __init__(self, path, problem):
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


def _join(path, key):
    return "%s.%s" % (path, key) if path else str(key)


def _mapping(path, value, known, what):
    """Check that ``value`` is a mapping whose keys are all in ``known``."""
    if not isinstance(value, dict):
        raise _Invalid(path, "must be a mapping (%s), not %s" % (what, files.type_name(value)))
    for key in value:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            raise _Invalid(_join(path, key), "unknown key%s" % (
                " (did you mean %r?)" % hint[0] if hint else " (known keys: %s)" % ", ".join(known)))
    return value


def _int(path, value, low, high):
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        shown = value if isinstance(value, int) and not isinstance(value, bool) else files.type_name(value)
        raise _Invalid(path, "must be a whole number from %d to %d, not %s" % (low, high, shown))
    return value


def _queue(path, value):
    if not isinstance(value, str) or not topology.NAME_RE.match(value) or value.startswith("amq."):
        raise _Invalid(path, "must be a queue name (%s), not %r" % (topology.NAME_RULE, value))
    return value


def _args(path, value):
    if not isinstance(value, dict):
        raise _Invalid(path, "must be a mapping (the test job's args, such as {command: [make, "
                             "check]}), not %s" % files.type_name(value))
    for key in value:
        if not isinstance(key, str):
            raise _Invalid(path, "keys must be strings, not %r" % (key,))
    return copy.deepcopy(value)


def _strings(path, value, what, check=None):
    """A list of non-empty strings; ``what`` is (plural, singular) for messages."""
    plural, singular = what
    if isinstance(value, str):
        raise _Invalid(path, "must be a list of %s (write [%s] for one)" % (plural, value))
    if not isinstance(value, list):
        raise _Invalid(path, "must be a list of %s, not %s" % (plural, files.type_name(value)))
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip() or (check and not check(item)):
            raise _Invalid("%s[%d]" % (path, index), "must be %s, not %r" % (singular, item))
    return list(value)


def _defaults(path, value, base):
    _mapping(path, value, tuple(DEFAULTS), "of default settings")
    result = dict(base)
    for key, item in value.items():
        where = _join(path, key)
        if key == "queue":
            result[key] = _queue(where, item)
        elif key == "timeout":
            result[key] = _int(where, item, 1, jobs.MAX_TIMEOUT)
        elif key == "args":
            result[key] = _args(where, item)
        elif key == "queued_timeout":
            result[key] = _int(where, item, 60, 30 * 24 * 3600)
        elif key == "max_attempts":
            result[key] = _int(where, item, 1, 100)
        else:  # skip_labels
            result[key] = _strings(where, item, ("label names", "a label name"))
    return result


def _allow(path, value):
    _mapping(path, value, ALLOW_KEYS, "with authors, orgs, associations")
    result = {}
    if "authors" in value:
        result["authors"] = [a.lower() for a in _strings(
            _join(path, "authors"), value["authors"], ("GitHub logins", "a GitHub login"), LOGIN_RE.match)]
    if "orgs" in value:
        result["orgs"] = _strings(_join(path, "orgs"), value["orgs"],
                                  ("organisation logins", "an organisation login"), LOGIN_RE.match)
    if "associations" in value:
        where = _join(path, "associations")
        names = _strings(where, value["associations"],
                         ("author associations", "an author association"))
        for index, name in enumerate(names):
            if name.upper() not in ASSOCIATIONS:
                hint = difflib.get_close_matches(name.upper(), ASSOCIATIONS, n=1)
                raise _Invalid("%s[%d]" % (where, index), "%r is not a GitHub author_association%s"
                               % (name, " (did you mean %r?)" % hint[0] if hint else " (known: %s)"
                                  % ", ".join(ASSOCIATIONS)))
        result["associations"] = [n.upper() for n in names]
    return result


def _context(path, value, defaults, manual):
    name_path = path
    if isinstance(value, str):
        value = {"context": value}
    elif isinstance(value, dict):
        name_path = _join(path, "context")
    else:
        raise _Invalid(path, "must be a context name (such as debian-12/default) or a mapping "
                             "with context, queue, timeout, args, image; not %s" % files.type_name(value))
    _mapping(path, value, CONTEXT_KEYS, "a context")
    if "context" not in value:
        raise _Invalid(name_path, "is required (the context's name)")
    name = value["context"]
    if not isinstance(name, str) or not jobs.CONTEXT_RE.match(name) or len(name) > 255:
        raise _Invalid(name_path, "must be %s: letters, digits, '.', '_', '-' in parts joined by '/', not %r"
                       % (jobs.FIELDS["context"], name))
    queue = _queue(_join(path, "queue"), value["queue"]) if "queue" in value else defaults["queue"]
    timeout = (_int(_join(path, "timeout"), value["timeout"], 1, jobs.MAX_TIMEOUT)
               if "timeout" in value else defaults["timeout"])
    args = copy.deepcopy(defaults["args"])
    if "args" in value:
        args.update(_args(_join(path, "args"), value["args"]))
    image = None
    if "image" in value:
        image = value["image"]
        if not isinstance(image, str) or not image_naming.NAME_RE.match(image):
            raise _Invalid(_join(path, "image"), "must be an image name (1-64 lowercase letters, digits, '.', '_', "
                                                 "'-'), not %r" % (image,))
    return ContextSpec(name, queue, timeout, args, manual, image)


def _contexts(path, value, defaults, manual):
    if not isinstance(value, list):
        raise _Invalid(path, "must be a list of contexts, not %s" % files.type_name(value))
    specs, seen = [], {}
    for index, item in enumerate(value):
        spec = _context("%s[%d]" % (path, index), item, defaults, manual)
        if spec.name in seen:
            raise _Invalid("%s[%d]" % (path, index), "context %r is already listed at [%d]"
                           % (spec.name, seen[spec.name]))
        seen[spec.name] = index
        specs.append(spec)
    return specs


class _Repo:
    __slots__ = ("name", "defaults", "allow", "heads", "branches", "patterns", "manual")


def _repo(path, name, value, defaults, allow):
    if not isinstance(name, str) or not jobs.REPO_RE.match(name):
        raise _Invalid(path, "%r is not a GitHub repository (write it as 'owner/name')" % (name,))
    if value is None:
        value = {}
    _mapping(path, value, REPO_KEYS, "with defaults, allow, heads, branches, manual")
    repo = _Repo()
    repo.name = name
    repo.defaults = (_defaults(_join(path, "defaults"), value["defaults"], defaults)
                     if "defaults" in value else dict(defaults))
    extra = _allow(_join(path, "allow"), value["allow"]) if "allow" in value else {}
    repo.allow = {}
    for key in ALLOW_KEYS:
        merged = list(allow.get(key, ()))
        repo.allow[key] = merged + [v for v in extra.get(key, ()) if v not in merged]
    heads = value.get("heads", True)
    if not isinstance(heads, bool):
        raise _Invalid(_join(path, "heads"), "must be true or false, not %s" % files.type_name(heads))
    repo.heads = heads
    branches = value.get("branches")
    branches = {} if branches is None else branches
    if not isinstance(branches, dict):
        raise _Invalid(_join(path, "branches"), "must be a mapping of branch name (or glob "
                                                "pattern) to a list of contexts, not %s" % files.type_name(branches))
    repo.branches, repo.patterns = {}, []
    for branch, contexts in branches.items():
        where = _join(_join(path, "branches"), branch)
        if not isinstance(branch, str) or not branch.strip():
            raise _Invalid(where, "a branch name must be a string (quote names such as '2024' "
                                  "or 'yes'), not %s" % files.type_name(branch))
        specs = _contexts(where, contexts if contexts is not None else [], repo.defaults, False)
        if any(c in branch for c in GLOB_CHARS):
            repo.patterns.append((branch, specs))
        else:
            repo.branches[branch] = specs
    manual = value.get("manual")
    repo.manual = _contexts(_join(path, "manual"), [] if manual is None else manual, repo.defaults, True)
    listed = set(s.name for specs in list(repo.branches.values()) + [s for p, s in repo.patterns]
                 for s in specs)
    for index, spec in enumerate(repo.manual):
        if spec.name in listed:
            raise _Invalid("%s[%d]" % (_join(path, "manual"), index),
                           "context %r is also listed under branches: a context is either run "
                           "automatically or manual-only" % spec.name)
    return repo


class TestMap:
    """A validated test map. Build it with :func:`parse_testmap` or :func:`load_testmap`."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, source, repos, allow, defaults):
        self.source = source
        self._repos = repos
        self._allow = allow
        self._defaults = defaults

    @property
    def repos(self):
        """The repositories, in file order."""
        return list(self._repos)

    def _repo(self, repo):
        found = self._repos.get(repo)
        if found is None:  # GitHub names are case-insensitive
            for name, value in self._repos.items():
                if name.lower() == (repo or "").lower():
                    return value
        return found

    def branch_key(self, repo, branch):
        """The key of ``branches`` that applies to ``branch`` (exact name, else first pattern)."""
        entry = self._repo(repo)
        if entry is None or branch is None:
            return None
        if branch.startswith("refs/heads/"):
            branch = branch[len("refs/heads/"):]
        if branch in entry.branches:
            return branch
        for pattern, dummy in entry.patterns:
            if fnmatch.fnmatchcase(branch, pattern):
                return pattern
        return None

    def contexts_for(self, repo, branch):
        """The automatic contexts of PRs against ``branch`` and of its pushes (may be [])."""
        key = self.branch_key(repo, branch)
        if key is None:
            return []
        entry = self._repo(repo)
        if key in entry.branches:
            return list(entry.branches[key])
        return list(dict(entry.patterns)[key])

    def manual_contexts(self, repo):
        """The manual-only contexts of ``repo``."""
        entry = self._repo(repo)
        return list(entry.manual) if entry else []

    def context(self, repo, name, branch=None):
        """The spec of context ``name`` for ``repo`` (``branch``'s first, then manual, then any)."""
        entry = self._repo(repo)
        if entry is None:
            return None
        candidates = self.contexts_for(repo, branch) if branch is not None else []
        candidates += entry.manual
        for specs in list(entry.branches.values()) + [s for p, s in entry.patterns]:
            candidates += specs
        for spec in candidates:
            if spec.name == name:
                return spec
        return None

    def head_branches(self, repo):
        """The exact branch names whose heads a repository scan tests (none when heads: false)."""
        entry = self._repo(repo)
        return list(entry.branches) if entry is not None and entry.heads else []

    def policy(self, repo):
        """The scanner's :class:`RepoPolicy` for ``repo`` (the global defaults for others)."""
        entry = self._repo(repo)
        values = entry.defaults if entry is not None else self._defaults
        return RepoPolicy(values["queued_timeout"], values["max_attempts"], list(values["skip_labels"]))

    def allow_list(self, repo):
        """The allow-list of ``repo``: {authors, orgs, associations} (global plus the repo's)."""
        entry = self._repo(repo)
        allow = entry.allow if entry is not None else self._allow
        return dict((k, list(v)) for k, v in allow.items())

    def author_allowed(self, repo, author, author_association=None, is_org_member=None):
        """Whether PRs of ``author`` are tested without a maintainer's ``/approve``.

        True when the login is listed, the ``author_association`` is trusted, or the author
        belongs to a listed org. ``is_org_member(org, login) -> bool`` is only called when the
        other two did not decide (it costs a request); without it, orgs are not checked.
        """
        allow = self.allow_list(repo)
        if not author:
            return False
        if author.lower() in allow["authors"]:
            return True
        if author_association and author_association.upper() in allow["associations"]:
            return True
        if is_org_member is not None:
            for org in allow["orgs"]:
                if is_org_member(org, author):
                    return True
        return False


def parse_testmap(data, source="(testmap)"):
    """Validate an already parsed test map; return a :class:`TestMap` or raise TestMapError."""
    try:
        return _parse(data, source)
    except _Invalid as exc:
        raise TestMapError("%s: %s: %s" % (source, exc.path, exc.problem) if exc.path
                           else "%s: %s" % (source, exc.problem))


def _parse(data, source):
    if data is None:
        data = {}
    _mapping("", data, TOP_KEYS, "with defaults, allow, repos")
    defaults = (_defaults("defaults", data["defaults"], DEFAULTS) if data.get("defaults") is not None
                else copy.deepcopy(DEFAULTS))
    allow = _allow("allow", data["allow"]) if data.get("allow") is not None else {}
    allow.setdefault("authors", [])
    allow.setdefault("orgs", [])
    allow.setdefault("associations", list(DEFAULT_ASSOCIATIONS))
    repos_data = data.get("repos")
    repos_data = {} if repos_data is None else repos_data
    if not isinstance(repos_data, dict):
        raise _Invalid("repos", "must be a mapping of 'owner/name' to the repository's branches, "
                                "not %s" % files.type_name(repos_data))
    repos, lowered = collections.OrderedDict(), {}
    for name, value in repos_data.items():
        path = _join("repos", name)
        repo = _repo(path, name, value, defaults, allow)
        if name.lower() in lowered:
            raise _Invalid(path, "is the same repository as %r (GitHub names ignore case)"
                           % lowered[name.lower()])
        lowered[name.lower()] = name
        repos[name] = repo
    return TestMap(source, repos, allow, defaults)


def load_testmap(path):
    """Read and validate the test map file at ``path``; raise TestMapError naming the problem.

    A key given twice is an error (a second ``main:`` would silently drop contexts)."""
    try:
        data = files.load_yaml_file(path, "test map")
    except files.FileProblem as exc:
        raise TestMapError(str(exc)) from None
    return parse_testmap(data, path)
