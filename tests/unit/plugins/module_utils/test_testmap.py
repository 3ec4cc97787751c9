import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import testmap
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import (
    ContextSpec, RepoPolicy, TestMapError, load_testmap, parse_testmap)

EXAMPLE = """\
defaults:
  timeout: 3600
allow:
  authors: [Alice]
  orgs: [example]
repos:
  org/proj:
    allow:
      authors: [bob]
      associations: [CONTRIBUTOR]
    branches:
      main:
        - debian-12/default
        - context: fedora-40/kvm
          queue: tests.internal
          timeout: 5400
          args: {command: [make, check]}
      "rhel-*":
        - centos-9/default
      "*":
        - debian-12/default
    manual:
      - debian-12/expensive
  org/other:
    defaults: {queue: tests.internal, max_attempts: 5, skip_labels: [skip-ci, wip], args: {env: {A: "1"}}}
    heads: false
    branches:
      main: [ubuntu-24.04/default, {context: ubuntu-24.04/extra, args: {env: {B: "2"}}}]
"""


def write(tmp_path, text, name="testmap.yml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def tmap(tmp_path):
    return load_testmap(write(tmp_path, EXAMPLE))


def error_of(data):
    with pytest.raises(TestMapError) as raised:
        parse_testmap(data, "testmap.yml")
    return str(raised.value)


def test_the_example_loads(tmap):
    assert tmap.repos == ["org/proj", "org/other"]
    assert tmap.contexts_for("org/proj", "main") == [
        ContextSpec("debian-12/default", "tests.public", 3600, {}, False),
        ContextSpec("fedora-40/kvm", "tests.internal", 5400, {"command": ["make", "check"]}, False),
    ]
    assert tmap.manual_contexts("org/proj") == [
        ContextSpec("debian-12/expensive", "tests.public", 3600, {}, True)]


def test_context_specs_have_the_contract_fields_first(tmap):
    spec = tmap.contexts_for("org/proj", "main")[1]
    assert (spec.name, spec.queue, spec.timeout) == ("fedora-40/kvm", "tests.internal", 5400)


@pytest.mark.parametrize("branch, key, names", [
    ("main", "main", ["debian-12/default", "fedora-40/kvm"]),
    ("refs/heads/main", "main", ["debian-12/default", "fedora-40/kvm"]),
    ("rhel-9", "rhel-*", ["centos-9/default"]),        # first matching pattern in file order
    ("feature/x", "*", ["debian-12/default"]),
    ("mainline", "*", ["debian-12/default"]),         # exact names are exact
])
def test_branches_exact_names_win_then_the_first_matching_pattern(tmap, branch, key, names):
    assert tmap.branch_key("org/proj", branch) == key
    assert [s.name for s in tmap.contexts_for("org/proj", branch)] == names


def test_unknown_repos_and_branches_have_no_contexts(tmap):
    assert tmap.contexts_for("org/nothing", "main") == []
    assert tmap.contexts_for("org/other", "devel") == []
    assert tmap.contexts_for("org/other", None) == []
    assert tmap.manual_contexts("org/nothing") == []
    assert tmap.context("org/nothing", "debian-12/default") is None


def test_repository_names_ignore_case(tmap):
    assert [s.name for s in tmap.contexts_for("ORG/Proj", "main")] == ["debian-12/default", "fedora-40/kvm"]


def test_context_lookup(tmap):
    assert tmap.context("org/proj", "debian-12/expensive").manual is True
    assert tmap.context("org/proj", "centos-9/default").queue == "tests.public"
    assert tmap.context("org/proj", "fedora-40/kvm", branch="main").timeout == 5400
    assert tmap.context("org/proj", "nope") is None


def test_repository_defaults_replace_the_global_ones(tmap):
    main = tmap.contexts_for("org/other", "main")
    assert main[0] == ContextSpec("ubuntu-24.04/default", "tests.internal", 3600, {"env": {"A": "1"}}, False)
    # a context's args are added to the defaults' args (top-level keys)
    assert main[1].args == {"env": {"B": "2"}}
    assert tmap.policy("org/other") == RepoPolicy(86400, 5, ["skip-ci", "wip"])
    assert tmap.policy("org/proj") == RepoPolicy(86400, 3, ["no-test"])
    assert tmap.policy("org/unknown") == RepoPolicy(86400, 3, ["no-test"])


def test_head_branches_are_the_exact_names(tmap):
    assert tmap.head_branches("org/proj") == ["main"]
    assert tmap.head_branches("org/other") == []     # heads: false
    assert tmap.head_branches("org/unknown") == []


def test_allow_lists_are_global_plus_the_repositorys(tmap):
    assert tmap.allow_list("org/proj") == {
        "authors": ["alice", "bob"], "orgs": ["example"],
        "associations": ["OWNER", "MEMBER", "COLLABORATOR", "CONTRIBUTOR"]}
    assert tmap.allow_list("org/other") == {
        "authors": ["alice"], "orgs": ["example"], "associations": ["OWNER", "MEMBER", "COLLABORATOR"]}


@pytest.mark.parametrize("repo, author, association, members, allowed", [
    ("org/proj", "alice", "NONE", {}, True),            # global login, any case
    ("org/proj", "ALICE", None, {}, True),
    ("org/proj", "bob", "NONE", {}, True),              # repo's login
    ("org/other", "bob", "NONE", {}, False),
    ("org/other", "carol", "MEMBER", {}, True),         # trusted association
    ("org/other", "carol", "member", {}, True),
    ("org/other", "carol", "CONTRIBUTOR", {}, False),
    ("org/proj", "carol", "CONTRIBUTOR", {}, True),     # repo adds an association
    ("org/other", "dave", "NONE", {("example", "dave")}, True),   # org member
    ("org/other", "eve", "FIRST_TIME_CONTRIBUTOR", {("other", "eve")}, False),
    ("org/other", None, "OWNER", {}, False),
])
def test_author_allowed(tmap, repo, author, association, members, allowed):
    asked = []

    def is_org_member(org, login):
        asked.append((org, login))
        return (org, login) in members
    assert tmap.author_allowed(repo, author, association, is_org_member) is allowed
    # the org membership costs a request: only asked when nothing else decided
    if allowed and not members:
        assert asked == []


def test_orgs_are_not_checked_without_a_lookup(tmap):
    assert tmap.author_allowed("org/other", "dave", "NONE") is False


def test_an_empty_file_is_an_empty_map(tmp_path):
    tmap = load_testmap(write(tmp_path, ""))
    assert tmap.repos == []
    assert tmap.allow_list("a/b")["associations"] == ["OWNER", "MEMBER", "COLLABORATOR"]


def test_a_repo_without_anything(tmp_path):
    tmap = parse_testmap({"repos": {"a/b": None, "a/c": {"branches": {"main": None}}}})
    assert tmap.repos == ["a/b", "a/c"]
    assert tmap.contexts_for("a/c", "main") == []
    assert tmap.head_branches("a/c") == ["main"]


@pytest.mark.parametrize("data, message", [
    ([], "testmap.yml: must be a mapping (with defaults, allow, repos), not a list"),
    ({"repo": {}}, "testmap.yml: repo: unknown key (did you mean 'repos'?)"),
    ({"colour": 1}, "testmap.yml: colour: unknown key (known keys: defaults, allow, repos)"),
    ({"repos": []}, "testmap.yml: repos: must be a mapping of 'owner/name' to the repository's branches, not a list"),
    ({"repos": {"proj": {}}}, "testmap.yml: repos.proj: 'proj' is not a GitHub repository (write it as 'owner/name')"),
    ({"repos": {"org/proj": {"branch": {}}}},
     "testmap.yml: repos.org/proj.branch: unknown key (did you mean 'branches'?)"),
    ({"repos": {"org/proj": {"branches": {"main": ["a", "b", {"context": "c", "queue": "amq.x"}]}}}},
     "testmap.yml: repos.org/proj.branches.main[2].queue: must be a queue name (a name of 1-255 "
     "letters, digits, '.', '_', ':' or '-', not starting with 'amq.'), not 'amq.x'"),
    ({"repos": {"org/proj": {"branches": {"main": [{"context": "c", "queu": "x"}]}}}},
     "testmap.yml: repos.org/proj.branches.main[0].queu: unknown key (did you mean 'queue'?)"),
    ({"repos": {"org/proj": {"branches": {"main": [{"queue": "x"}]}}}},
     "testmap.yml: repos.org/proj.branches.main[0].context: is required (the context's name)"),
    ({"repos": {"org/proj": {"branches": {"main": ["bad context"]}}}},
     "testmap.yml: repos.org/proj.branches.main[0]: must be a test context such as "
     "'debian-12/default': letters, digits, '.', '_', '-' in parts joined by '/', not 'bad context'"),
    ({"repos": {"org/proj": {"branches": {"main": [{"context": "a//b"}]}}}},
     "testmap.yml: repos.org/proj.branches.main[0].context: must be a test context"),
    ({"repos": {"org/proj": {"branches": {"main": [{"context": "a", "timeout": 0}]}}}},
     "testmap.yml: repos.org/proj.branches.main[0].timeout: must be a whole number from 1 to 604800, not 0"),
    ({"repos": {"org/proj": {"branches": {"main": [{"context": "a", "timeout": "1h"}]}}}},
     "testmap.yml: repos.org/proj.branches.main[0].timeout: must be a whole number from 1 to 604800, not a string"),
    ({"repos": {"org/proj": {"branches": {"main": [{"context": "a", "args": ["make"]}]}}}},
     "testmap.yml: repos.org/proj.branches.main[0].args: must be a mapping"),
    ({"repos": {"org/proj": {"branches": {"main": [7]}}}},
     "testmap.yml: repos.org/proj.branches.main[0]: must be a context name (such as debian-12/default) or a mapping"),
    ({"repos": {"org/proj": {"branches": {"main": "debian-12/default"}}}},
     "testmap.yml: repos.org/proj.branches.main: must be a list of contexts, not a string"),
    ({"repos": {"org/proj": {"branches": {"main": ["a", "b", "a"]}}}},
     "testmap.yml: repos.org/proj.branches.main[2]: context 'a' is already listed at [0]"),
    ({"repos": {"org/proj": {"branches": {2024: ["a"]}}}},
     "testmap.yml: repos.org/proj.branches.2024: a branch name must be a string (quote names such as '2024'"),
    ({"repos": {"org/proj": {"branches": {"main": ["a"]}, "manual": ["b", "a"]}}},
     "testmap.yml: repos.org/proj.manual[1]: context 'a' is also listed under branches"),
    ({"repos": {"org/proj": {"heads": "yes"}}}, "testmap.yml: repos.org/proj.heads: must be true or false, not a string"),
    ({"repos": {"org/proj": {}, "Org/Proj": {}}},
     "testmap.yml: repos.Org/Proj: is the same repository as 'org/proj' (GitHub names ignore case)"),
    ({"defaults": {"max_attempts": 0}}, "testmap.yml: defaults.max_attempts: must be a whole number from 1 to 100, not 0"),
    ({"defaults": {"queued_timeout": 10}}, "testmap.yml: defaults.queued_timeout: must be a whole number from 60"),
    ({"defaults": {"skip_label": "no-test"}}, "testmap.yml: defaults.skip_label: unknown key (did you mean 'skip_labels'?)"),
    ({"defaults": {"skip_labels": "no-test"}},
     "testmap.yml: defaults.skip_labels: must be a list of label names (write [no-test] for one)"),
    ({"defaults": {"skip_labels": ["ok", ""]}}, "testmap.yml: defaults.skip_labels[1]: must be a label name, not ''"),
    ({"defaults": {"timeout": True}}, "testmap.yml: defaults.timeout: must be a whole number from 1 to 604800, not a boolean"),
    ({"defaults": []}, "testmap.yml: defaults: must be a mapping (of default settings), not a list"),
    ({"allow": {"author": ["x"]}}, "testmap.yml: allow.author: unknown key (did you mean 'authors'?)"),
    ({"allow": {"authors": ["ok", "not a login"]}}, "testmap.yml: allow.authors[1]: must be a GitHub login, not 'not a login'"),
    ({"allow": {"orgs": "example"}}, "testmap.yml: allow.orgs: must be a list of organisation logins (write [example] for one)"),
    ({"allow": {"associations": ["MEMBERS"]}},
     "testmap.yml: allow.associations[0]: 'MEMBERS' is not a GitHub author_association (did you mean 'MEMBER'?)"),
    ({"repos": {"org/proj": {"allow": {"associations": ["maintainer"]}}}},
     "testmap.yml: repos.org/proj.allow.associations[0]: 'maintainer' is not a GitHub author_association (known: OWNER"),
    ({"repos": {"org/proj": {"defaults": {"queue": "no spaces"}}}},
     "testmap.yml: repos.org/proj.defaults.queue: must be a queue name"),
])
def test_errors_name_the_file_and_the_key_path(data, message):
    assert error_of(data).startswith(message)


def test_bot_logins_are_accepted():
    tmap = parse_testmap({"allow": {"authors": ["dependabot[bot]"]}})
    assert tmap.author_allowed("a/b", "dependabot[bot]", "NONE")


def test_load_reports_a_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yml")
    with pytest.raises(TestMapError, match="cannot read the test map %s: No such file" % missing):
        load_testmap(missing)


def test_load_reports_invalid_yaml_with_its_line(tmp_path):
    path = write(tmp_path, "repos:\n  org/proj: [\n")
    with pytest.raises(TestMapError, match=r"testmap.yml: line 3 column 1 is not valid YAML"):
        load_testmap(path)


def test_load_refuses_a_key_given_twice(tmp_path):
    path = write(tmp_path, "repos:\n  org/proj:\n    branches:\n      main: [a]\n      main: [b]\n")
    with pytest.raises(TestMapError) as raised:
        load_testmap(path)
    assert str(raised.value) == "%s: line 5: the key 'main' is given twice" % path


def test_load_names_the_file_in_errors(tmp_path):
    path = write(tmp_path, "repos:\n  org/proj:\n    branches:\n      main: [{context: a, timeout: -1}]\n")
    with pytest.raises(TestMapError) as raised:
        load_testmap(path)
    assert str(raised.value).startswith("%s: repos.org/proj.branches.main[0].timeout: " % path)


def test_the_source_is_kept(tmap):
    assert tmap.source.endswith("testmap.yml")
    assert isinstance(tmap, testmap.TestMap)


@pytest.mark.parametrize("key, value, message", [
    ("branches", [], "testmap.yml: repos.a/b.branches: must be a mapping of branch name (or glob pattern) to a list of contexts, not a list"),
    ("manual", {}, "testmap.yml: repos.a/b.manual: must be a list of contexts, not a mapping"),
    ("manual", "x/y", "testmap.yml: repos.a/b.manual: must be a list of contexts, not a string"),
])
def test_empty_values_of_the_wrong_type_are_refused(key, value, message):
    assert error_of({"repos": {"a/b": {key: value}}}) == message


def test_the_image_a_context_boots():
    tmap = parse_testmap({"repos": {"o/r": {"branches": {"main": [
        "debian-12/default", {"context": "unit/fast", "image": "debian-12.minimal"}]}}}})
    assert [(s.name, s.image) for s in tmap.contexts_for("o/r", "main")] == [
        ("debian-12/default", "debian-12"), ("unit/fast", "debian-12.minimal")]
    with pytest.raises(TestMapError, match=r"repos.o/r.branches.main\[0\].image: must be an image name"):
        parse_testmap({"repos": {"o/r": {"branches": {"main": [{"context": "a/b", "image": "Debian 12"}]}}}})
