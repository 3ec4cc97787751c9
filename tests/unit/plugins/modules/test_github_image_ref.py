"""github_image_ref and github_image_refs, run in-process against the fake GitHub server."""

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images.refs import parse_refs

REPO = "testfleet-example/widget"
PATH = ".testfleet/images.yml"
OLD = "debian-12-" + "a" * 64
NEW = "debian-12-" + "b" * 64
NEWER = "debian-12-" + "c" * 64
FEDORA = "fedora-41-" + "d" * 64
BASE_TEXT = "# images of the tests\ndebian-12: %s  # bookworm\nfedora-41: %s\n" % (OLD, FEDORA)


@pytest.fixture
def gh(fake_github):
    fake_github.add_repo(REPO)
    fake_github.add_commit(REPO, {PATH: BASE_TEXT, "README": "widget\n"}, branch="main")
    return fake_github


@pytest.fixture
def args(gh, tmp_path):
    token_file = tmp_path / "github-token"
    token_file.write_text(gh.token)
    return {"api_url": gh.url, "token_file": str(token_file), "repo": REPO, "image": NEW}


def writes(gh):
    return [(r["method"], r["path"]) for r in gh.requests if r["method"] != "GET"]


def test_opens_a_pull_request_that_changes_one_line(run_module, gh, args):
    result = run_module("github_image_ref", args, diff=True)
    assert "failed" not in result, result
    assert (result["changed"], result["created"], result["committed"], result["up_to_date"]) == (True, True, True,
                                                                                                 False)
    assert (result["branch"], result["base"], result["previous"]) == ("testfleet/image-debian-12", "main", OLD)
    [pull] = gh.pulls(REPO)
    assert result["pull"]["number"] == pull["number"] and pull["state"] == "open"
    assert (pull["head"]["ref"], pull["base"]["ref"]) == ("testfleet/image-debian-12", "main")
    assert pull["title"] == "Images - debian-12 %s" % ("b" * 12)
    assert "- before: `%s`" % OLD in pull["body"] and "- after: `%s`" % NEW in pull["body"]
    on_branch = gh.file_at(REPO, "testfleet/image-debian-12", PATH).decode()
    assert on_branch == BASE_TEXT.replace(OLD, NEW)
    assert pull["head"]["sha"] == result["pull"]["head_sha"]
    assert gh.file_at(REPO, "main", PATH).decode() == BASE_TEXT  # main untouched
    assert gh.file_at(REPO, "testfleet/image-debian-12", "README") == b"widget\n"
    assert result["diff"]["before"] == BASE_TEXT and result["diff"]["after"] == on_branch
    assert gh.token not in repr(result)


def test_the_same_image_again_changes_nothing(run_module, gh, args):
    run_module("github_image_ref", args)
    gh.reset_records()
    again = run_module("github_image_ref", args)
    assert (again["changed"], again["created"], again["committed"]) == (False, False, False), again
    assert writes(gh) == [] and len(gh.pulls(REPO)) == 1


def test_a_newer_image_updates_the_open_pull_request(run_module, gh, args):
    first = run_module("github_image_ref", args)
    newer = run_module("github_image_ref", dict(args, image=NEWER))
    assert (newer["changed"], newer["created"], newer["committed"]) == (True, False, True)
    assert newer["pull"]["number"] == first["pull"]["number"] and len(gh.pulls(REPO)) == 1
    assert parse_refs(gh.file_at(REPO, "testfleet/image-debian-12", PATH).decode())["debian-12"].sha256 == "c" * 64
    [pull] = gh.pulls(REPO)
    assert pull["head"]["sha"] == newer["pull"]["head_sha"] != first["pull"]["head_sha"]
    assert pull["title"] == "Images - debian-12 %s" % ("c" * 12) and "- after: `%s`" % NEWER in pull["body"]


def test_check_mode_writes_nothing(run_module, gh, args):
    result = run_module("github_image_ref", args, check_mode=True, diff=True)
    assert (result["changed"], result["created"], result["committed"]) == (True, True, True)
    assert "pull" not in result and result["diff"]["after"] == BASE_TEXT.replace(OLD, NEW)
    assert writes(gh) == [] and gh.pulls(REPO) == []


def test_nothing_to_do_when_base_already_uses_the_image(run_module, gh, args):
    result = run_module("github_image_ref", dict(args, image=OLD))
    assert (result["changed"], result["up_to_date"]) == (False, True) and "pull" not in result
    assert writes(gh) == []


def test_a_branch_left_from_a_merged_pull_request_starts_again_from_base(run_module, gh, args):
    first = run_module("github_image_ref", args)
    gh.update_pull(REPO, first["pull"]["number"], merged=True)
    gh.add_commit(REPO, {PATH: BASE_TEXT.replace(OLD, NEW), "NEWS": "merged\n"}, branch="main")
    again = run_module("github_image_ref", dict(args, image=NEWER))
    assert (again["created"], again["committed"], again["previous"]) == (True, True, NEW)
    assert again["pull"]["number"] != first["pull"]["number"]
    assert gh.file_at(REPO, "testfleet/image-debian-12", "NEWS") == b"merged\n"  # reset onto main
    assert gh.file_at(REPO, "testfleet/image-debian-12", PATH).decode() == BASE_TEXT.replace(OLD, NEWER)


def test_a_new_file_and_a_new_entry(run_module, gh, args):
    gh.add_commit(REPO, {PATH: None}, branch="main")
    result = run_module("github_image_ref", dict(args, image=FEDORA.replace("fedora-41", "centos-9")))
    assert result["created"] and result["previous"] is None and result["branch"] == "testfleet/image-centos-9"
    assert gh.file_at(REPO, "testfleet/image-centos-9", PATH).decode() == "centos-9: centos-9-%s\n" % ("d" * 64)


@pytest.mark.parametrize("change, problem", [
    ({"image": "b" * 64}, "not a bare SHA-256"),
    ({"image": "Debian"}, "is not an image reference"),
    ({"base": "nope"}, "has no branch nope"),
    ({"branch": "main"}, "branch and base are both main"),
])
def test_clear_errors(run_module, gh, args, change, problem):
    result = run_module("github_image_ref", dict(args, **change))
    assert result.get("failed") and problem in result["msg"], result


def test_an_unreadable_references_file_fails_clearly(run_module, gh, args):
    gh.add_commit(REPO, {PATH: "- not a mapping\n"}, branch="main")
    result = run_module("github_image_ref", args)
    assert result.get("failed") and "must be a mapping of image names" in result["msg"]
    assert writes(gh) == []


def test_the_refs_collected_from_branches_and_open_pull_requests(run_module, gh, args, tmp_path):
    run_module("github_image_ref", args)                               # PR 1 references NEW
    gh.add_commit(REPO, {PATH: "debian-12: %s\n" % NEWER}, branch="old-release")
    gh.add_pull(REPO, 50, gh.add_commit(REPO, {PATH: "centos-9: centos-9-%s\n" % ("e" * 64)}, parent=None),
                head_ref="fork-branch", head_repo="someone/widget")
    gh.add_pull(REPO, 51, gh.add_commit(REPO, {PATH: "debian-12: debian-12-%s\n" % ("f" * 64)}, parent=None),
                state="closed")
    collect = dict((k, v) for k, v in args.items() if k not in ("image", "repo"))
    collect.update(repos=[REPO], etag_cache_dir=str(tmp_path / "etags"))
    gh.reset_records()
    result = run_module("github_image_refs", collect)
    assert "failed" not in result, result
    assert result["refs"] == sorted([OLD, FEDORA, NEW, NEWER, "centos-9-" + "e" * 64])
    assert result["changed"] is False and result["invalid"] == []
    kinds = sorted((h.get("branch") or "", h.get("pull") or 0) for h in result["heads"])
    assert kinds == [("", 1), ("", 50), ("main", 0), ("old-release", 0), ("testfleet/image-debian-12", 0)]
    # the PR head is the branch head: read once
    assert len([r for r in gh.requests if "/contents/" in r["path"]]) == 4
    gh.reset_records()
    again = run_module("github_image_refs", collect)
    # with an ETag cache on disk, an unchanged repository costs no rate limit (every answer a 304)
    assert again["refs"] == result["refs"] and again["requests"]["counted"] == 0, again["requests"]


def test_an_invalid_file_stops_the_collection_unless_told(run_module, gh, args):
    gh.add_commit(REPO, {PATH: "debian-12: typo\n"}, branch="broken")
    collect = {"api_url": args["api_url"], "token_file": args["token_file"], "repos": [REPO]}
    failed = run_module("github_image_refs", collect)
    assert failed.get("failed") and "debian-12 must be debian-12-<sha256>" in failed["msg"]
    assert "ignore_invalid" in failed["msg"]
    tolerated = run_module("github_image_refs", dict(collect, ignore_invalid=True))
    assert tolerated["refs"] == sorted([OLD, FEDORA])
    assert [h["branch"] for h in tolerated["invalid"]] == ["broken"]


def test_the_repositories_come_from_the_config_test_map(run_module, gh, args, tmp_path):
    testmap = tmp_path / "testmap.yml"
    testmap.write_text("repos:\n  %s:\n    branches:\n      main: [debian-12/default]\n" % REPO)
    config = tmp_path / "config.yml"
    config.write_text("forge:\n  api_url: %s\n  token_file: %s\ntestmap: %s\n" % (gh.url, args["token_file"], testmap))
    result = run_module("github_image_refs", {"config": str(config)})
    assert result["refs"] == sorted([OLD, FEDORA]), result
    no_repos = run_module("github_image_refs", {"api_url": gh.url, "token_file": args["token_file"]})
    assert no_repos.get("failed") and "repos is required" in no_repos["msg"]
