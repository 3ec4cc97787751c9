"""The forge client against the fake GitHub server (tests/fake_github/) over real HTTP."""

import json
import logging
import os
import socket
import stat
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ansible_collections.testfleet.infra.plugins.module_utils.forge.client import ForgeClient, ForgeError

REPO = "testfleet-example/widget"
SHA = "1" * 40


class Sleeps(list):
    """A ``sleep`` that records its waits instead of waiting; ``then`` runs after each."""

    def __init__(self, then=None):
        super().__init__()
        self.then = then

    def __call__(self, seconds):
        self.append(seconds)
        if self.then:
            self.then()


@pytest.fixture
def gh(fake_github):
    fake_github.add_repo(REPO)
    fake_github.set_branch(REPO, "main", "a" * 40)
    return fake_github


@pytest.fixture
def token_file(gh, tmp_path):
    path = tmp_path / "github-token"
    path.write_text(gh.token + "\n")
    return str(path)


@pytest.fixture
def client(gh, token_file):
    return ForgeClient(api_url=gh.url, token_file=token_file, sleep=Sleeps())


def add_pulls(gh, count, start=1):
    for number in range(start, start + count):
        gh.add_pull(REPO, number, "%040x" % number)


def test_pulls_reads_every_page_as_plain_dicts(gh, client):
    add_pulls(gh, 205)
    gh.add_pull(REPO, 300, SHA, author="bob", author_association="FIRST_TIME_CONTRIBUTOR", draft=True,
                labels=["no-test", "bug"], head_ref="feature/x", head_repo="bob/widget")
    gh.add_pull(REPO, 301, SHA, state="closed")
    pulls = client.pulls(REPO)
    assert [p["number"] for p in pulls] == [300] + list(range(205, 0, -1))
    assert pulls[0] == {
        "number": 300, "state": "open", "draft": True, "merged": False, "head_sha": SHA,
        "head_ref": "feature/x", "head_repo": "bob/widget", "base_ref": "main", "author": "bob",
        "author_association": "FIRST_TIME_CONTRIBUTOR", "labels": ["no-test", "bug"],
        "updated_at": pulls[0]["updated_at"], "title": "Change 300", "body": None,
        "html_url": "https://github.com/%s/pull/300" % REPO}
    assert [r["query"].get("page", "1") for r in gh.requests] == ["1", "2", "3"]
    assert all(r["query"]["per_page"] == "100" and r["query"]["state"] == "open" for r in gh.requests)
    assert client.stats == {"requests": 3, "counted": 3, "not_modified": 0, "writes": 0}
    assert client.stats["counted"] == gh.counted
    assert [p["number"] for p in client.pulls(REPO, state="closed")] == [301]
    with pytest.raises(ForgeError, match="state must be one of open, closed, all"):
        client.pulls(REPO, state="merged")


def test_merged_comes_from_merged_at_in_lists_and_merged_in_one_pull(gh, client):
    add_pulls(gh, 2)
    gh.update_pull(REPO, 2, merged=True)
    assert [(p["number"], p["state"], p["merged"]) for p in client.pulls(REPO, state="all")] == [
        (2, "closed", True), (1, "open", False)]
    assert client.pull(REPO, 2)["merged"] is True and client.pull(REPO, 1)["merged"] is False


def test_an_unchanged_second_read_costs_no_rate_limit(gh, client):
    add_pulls(gh, 150)
    gh.post_status(REPO, SHA, "success", "ci")
    first = (client.pulls(REPO), client.pull(REPO, 3), client.combined_status(REPO, SHA),
             client.branch_sha(REPO, "main"), client.permission(REPO, "alice"), client.comments(REPO, 3),
             client.hooks(REPO))
    counted = gh.counted
    assert client.stats["counted"] == counted == 8
    second = (client.pulls(REPO), client.pull(REPO, 3), client.combined_status(REPO, SHA),
              client.branch_sha(REPO, "main"), client.permission(REPO, "alice"), client.comments(REPO, 3),
              client.hooks(REPO))
    assert second == first
    assert gh.counted == counted and client.stats["counted"] == counted
    assert client.stats["not_modified"] == 8
    assert all(r["status"] == 304 and r["headers"]["If-None-Match"].startswith('W/"')
               for r in gh.requests[counted:])


def test_a_change_is_read_through_the_cache(gh, client):
    add_pulls(gh, 3)
    assert client.pull(REPO, 2)["labels"] == []
    gh.update_pull(REPO, 2, labels=["no-test"], head_sha=SHA)
    assert client.pull(REPO, 2)["labels"] == ["no-test"]
    assert client.pulls(REPO)[1]["head_sha"] == SHA
    assert client.stats == {"requests": 3, "counted": 3, "not_modified": 0, "writes": 0}


def test_an_item_that_appears_behind_an_unchanged_full_page_is_found(gh, client):
    add_pulls(gh, 100, start=2)
    gh.add_pull(REPO, 1, SHA, state="closed")
    assert len(client.pulls(REPO)) == 100
    gh.update_pull(REPO, 1, state="open")  # the oldest: on page 2, while page 1 stays the same
    assert [p["number"] for p in client.pulls(REPO)][-2:] == [2, 1]
    assert [(r["query"].get("page"), r["status"]) for r in gh.requests] == [(None, 200), (None, 304), ("2", 200)]


def test_the_disk_cache_is_shared_by_clients(gh, token_file, tmp_path):
    add_pulls(gh, 120)
    cache = tmp_path / "etags"
    first = ForgeClient(api_url=gh.url, token_file=token_file, etag_cache_dir=str(cache))
    pulls = first.pulls(REPO)
    assert first.stats["counted"] == 2
    second = ForgeClient(api_url=gh.url, token_file=token_file, etag_cache_dir=str(cache))
    assert second.pulls(REPO) == pulls
    assert second.stats == {"requests": 2, "counted": 0, "not_modified": 2, "writes": 0}
    assert gh.counted == 2
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    files = sorted(cache.iterdir())
    assert len(files) == 2 and all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    assert not any(gh.token in f.read_text() for f in files)
    # a corrupt entry is a miss, and is replaced
    files[0].write_text("{not json")
    third = ForgeClient(api_url=gh.url, token_file=token_file, etag_cache_dir=str(cache))
    assert third.pulls(REPO) == pulls and third.stats["counted"] == 1
    assert json.loads(files[0].read_text())["etag"].startswith('W/"')


def test_the_cache_is_per_credential(gh, token_file, tmp_path):
    add_pulls(gh, 1)
    cache = str(tmp_path / "etags")
    ForgeClient(api_url=gh.url, token_file=token_file, etag_cache_dir=cache).pulls(REPO)
    anonymous = ForgeClient(api_url=gh.url, etag_cache_dir=cache)
    with pytest.raises(ForgeError) as error:
        anonymous.pulls(REPO)
    assert error.value.status == 401
    assert "If-None-Match" not in gh.requests[-1]["headers"]


def test_a_low_budget_waits_for_the_reset(gh, token_file):
    add_pulls(gh, 1)
    reset = int(time.time()) + 30
    gh.set_rate_limit(remaining=10, reset=reset)
    sleeps = Sleeps(then=lambda: gh.set_rate_limit(remaining=5000, reset=int(time.time()) + 3600))
    client = ForgeClient(api_url=gh.url, token_file=token_file, min_remaining=50, sleep=sleeps)
    client.pull(REPO, 1)  # nothing known yet: sent; the answer says 9 left
    assert sleeps == []
    client.branch_sha(REPO, "main")
    assert len(sleeps) == 1 and 29 <= sleeps[0] <= 32
    assert gh.counted == client.stats["counted"] == 2


def test_a_reset_beyond_max_wait_fails_saying_when_and_sends_nothing(gh, token_file):
    add_pulls(gh, 1)
    reset = int(time.time()) + 600
    gh.set_rate_limit(remaining=10, reset=reset)
    client = ForgeClient(api_url=gh.url, token_file=token_file, max_wait=60, sleep=Sleeps())
    client.pull(REPO, 1)
    with pytest.raises(ForgeError) as error:
        client.pull(REPO, 1)
    assert error.value.status is None and error.value.retry_at == reset
    assert "only 9 GitHub API requests are left" in str(error.value)
    assert time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(reset)) in str(error.value)
    assert len(gh.requests) == 1


def test_retry_after_is_honoured(gh, client):
    add_pulls(gh, 1)
    gh.inject("GET", "/pulls/1$", 403, headers={"Retry-After": "7"})
    assert client.pull(REPO, 1)["number"] == 1
    assert client._sleep == [7.0]
    assert [r["status"] for r in gh.requests] == [403, 200]
    assert client.stats["counted"] == gh.counted == 2


def test_a_secondary_limit_without_retry_after_waits_a_minute(gh, token_file):
    add_pulls(gh, 1)
    gh.inject("GET", "/pulls/1$", 403)
    sleeps = Sleeps()
    assert ForgeClient(api_url=gh.url, token_file=token_file, sleep=sleeps).pull(REPO, 1)["number"] == 1
    assert sleeps == [60.0]
    gh.inject("POST", "/statuses/", 403)
    impatient = ForgeClient(api_url=gh.url, token_file=token_file, max_wait=10, sleep=sleeps)
    with pytest.raises(ForgeError) as error:
        impatient.create_status(REPO, SHA, "success", "ci")
    assert error.value.status == 403 and "secondary rate limit" in str(error.value)
    assert "longer than max_wait (10 s)" in str(error.value)
    assert sleeps == [60.0] and gh.statuses(REPO, SHA) == []


def test_a_used_up_primary_limit_waits_for_the_reset(gh, token_file):
    add_pulls(gh, 1)
    gh.set_rate_limit(remaining=0, reset=int(time.time()) + 20)
    sleeps = Sleeps(then=lambda: gh.set_rate_limit(remaining=5000, reset=int(time.time()) + 3600))
    client = ForgeClient(api_url=gh.url, token_file=token_file, min_remaining=0, sleep=sleeps)
    assert client.pull(REPO, 1)["number"] == 1
    assert len(sleeps) == 1 and 19 <= sleeps[0] <= 22
    assert [r["status"] for r in gh.requests] == [403, 200]


def test_transient_errors_are_retried_with_backoff(gh, client):
    add_pulls(gh, 1)
    gh.inject("GET", "/pulls$", 502, times=2)
    gh.inject("POST", "/statuses/", 503)
    assert len(client.pulls(REPO)) == 1
    assert client.create_status(REPO, SHA, "success", "ci")["state"] == "success"
    assert client._sleep == [1.0, 2.0, 1.0]
    assert len(gh.statuses(REPO, SHA)) == 1
    assert client.stats == {"requests": 5, "counted": 5, "not_modified": 0, "writes": 2}
    assert gh.counted == 5


def test_retries_are_bounded(gh, token_file):
    gh.inject("GET", "/branches/", 502, times=None)
    sleeps = Sleeps()
    client = ForgeClient(api_url=gh.url, token_file=token_file, retries=2, sleep=sleeps)
    with pytest.raises(ForgeError) as error:
        client.branch_sha(REPO, "main")
    assert error.value.status == 502
    assert str(error.value) == ("GitHub answered 502 Server Error to GET /repos/%s/branches/main after 2 retries"
                                % REPO)
    assert sleeps == [1.0, 2.0] and len(gh.requests) == 3


def test_errors_say_what_github_said(gh, client):
    with pytest.raises(ForgeError) as error:
        client.pull(REPO, 404)
    assert error.value.status == 404
    assert str(error.value) == ("GitHub answered 404 Not Found to GET /repos/%s/pulls/404 (it does not exist, "
                                "or these credentials cannot see it)" % REPO)
    with pytest.raises(ForgeError) as error:
        client.create_status(REPO, SHA, "success", "ci", description="x" * 141)
    assert error.value.status == 422
    assert str(error.value).endswith("422 Validation Failed to POST /repos/%s/statuses/%s: description is too "
                                     "long (maximum is 140 characters)" % (REPO, SHA))
    with pytest.raises(ForgeError, match="GitHub answered 404 Branch not found"):
        client.branch_sha(REPO, "nope")
    with pytest.raises(ForgeError, match="owner/name"):
        client.pulls("widget")
    assert client._sleep == []


def test_wrong_credentials_are_a_401(gh):
    client = ForgeClient(api_url=gh.url, token="ghp_wrong")
    with pytest.raises(ForgeError) as error:
        client.pulls(REPO)
    assert error.value.status == 401
    assert "credentials are wrong, expired or revoked" in str(error.value)
    assert "ghp_wrong" not in str(error.value)


def test_an_unreachable_server_is_retried_then_reported(token_file):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    sleeps = Sleeps()
    client = ForgeClient(api_url=url, token_file=token_file, sleep=sleeps, timeout=5)
    with pytest.raises(ForgeError) as error:
        client.create_status(REPO, SHA, "success", "ci")  # never sent: retried even though a POST
    assert error.value.status is None
    assert str(error.value).startswith("cannot reach GitHub at %s (POST /repos/%s/statuses/%s): ConnectionError"
                                       % (url, REPO, SHA))
    assert sleeps == [1.0, 2.0, 4.0]
    assert client.stats == {"requests": 4, "counted": 0, "not_modified": 0, "writes": 4}


def test_statuses_comments_permissions_members(gh, client):
    gh.add_pull(REPO, 5, SHA)
    for number in range(120):
        gh.post_status(REPO, SHA, "pending", "ctx-%03d" % number, description="old")
    gh.post_status(REPO, SHA, "success", "ctx-007", description="passed", target_url="https://logs/7")
    combined = client.combined_status(REPO, SHA)
    assert combined["state"] == "pending" and len(combined["statuses"]) == 120  # two pages
    assert combined["statuses"]["ctx-007"] == {
        "id": combined["statuses"]["ctx-007"]["id"], "context": "ctx-007", "state": "success",
        "description": "passed", "target_url": "https://logs/7", "creator": None,
        "created_at": combined["statuses"]["ctx-007"]["created_at"],
        "updated_at": combined["statuses"]["ctx-007"]["updated_at"]}
    posted = client.create_status(REPO, SHA, "failure", "ctx-001", description="no", target_url="https://l/1")
    assert (posted["state"], posted["context"], posted["creator"]) == ("failure", "ctx-001", gh.login)
    assert gh.statuses(REPO, SHA, "ctx-001")[-1]["description"] == "no"

    gh.add_comment(REPO, 5, "/retest", "carol")
    gh.add_comment(REPO, 5, "on it", gh.login)
    comments = client.comments(REPO, 5)
    assert [(c["user"], c["body"]) for c in comments] == [("carol", "/retest"), (gh.login, "on it")]
    assert set(comments[0]) >= {"id", "user", "body", "created_at"}
    assert client.comments(REPO, 5, since="2999-01-01T00:00:00Z") == []

    gh.set_permission(REPO, "carol", "triage")
    assert client.permission(REPO, "carol") == "triage"
    assert client.permission(REPO, "dave") == "read"  # a public repository
    gh.add_org_member("testfleet-example", "carol")
    assert client.is_org_member("testfleet-example", "carol") is True
    assert client.is_org_member("testfleet-example", "dave") is False
    before = len(gh.requests)
    assert client.is_org_member("testfleet-example", "carol") is True  # remembered
    assert len(gh.requests) == before
    assert client.stats["counted"] == gh.counted


def test_hooks_are_created_updated_and_deleted(gh, client):
    hook = client.create_hook(REPO, "https://ci.example.org/hook", "s3cret", ["push", "pull_request"])
    assert hook == {"id": hook["id"], "name": "web", "active": True, "events": ["push", "pull_request"],
                    "url": "https://ci.example.org/hook", "content_type": "json", "insecure_ssl": False,
                    "has_secret": True, "created_at": hook["created_at"], "updated_at": hook["updated_at"]}
    assert gh.hooks(REPO)[0]["config"]["secret"] == "s3cret"
    assert client.hooks(REPO) == [hook]
    updated = client.update_hook(REPO, hook["id"], "https://ci.example.org/hook", None, ["*"], "form", False, True)
    assert (updated["events"], updated["content_type"], updated["active"], updated["insecure_ssl"],
            updated["has_secret"]) == (["*"], "form", False, True, False)
    assert "secret" not in gh.hooks(REPO)[0]["config"]
    with pytest.raises(ForgeError) as error:
        client.create_hook(REPO, "https://ci.example.org/hook", "other", ["push"])
    assert error.value.status == 422 and "Hook already exists on this repository" in str(error.value)
    client.delete_hook(REPO, hook["id"])
    assert client.hooks(REPO) == []
    with pytest.raises(ForgeError) as error:
        client.delete_hook(REPO, hook["id"])
    assert error.value.status == 404


@pytest.fixture(scope="module")
def app_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_github_app_installation_token_is_fetched_once_and_used(gh, app_key, tmp_path):
    gh.register_app(42, public_pem(app_key), installation_ids=(7,))
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem(app_key))
    add_pulls(gh, 2)
    client = ForgeClient(api_url=gh.url, app_id=42, app_key_file=str(key_file), installation_id=7)
    assert len(client.pulls(REPO)) == 2
    assert client.create_status(REPO, SHA, "success", "ctx")["creator"] == "testfleet-app[bot]"
    assert client.pull(REPO, 1)["number"] == 1
    assert [(r["method"], r["path"], r["headers"]["Authorization"]) for r in gh.requests] == [
        ("POST", "/app/installations/7/access_tokens", "Bearer ********"),
        ("GET", "/repos/%s/pulls" % REPO, "token ********"),
        ("POST", "/repos/%s/statuses/%s" % (REPO, SHA), "token ********"),
        ("GET", "/repos/%s/pulls/1" % REPO, "token ********")]
    assert len(gh.installation_tokens()) == 1
    assert client.stats == {"requests": 4, "counted": 4, "not_modified": 0, "writes": 2}
    assert gh.counted == 4


def test_a_github_app_with_the_wrong_key_is_refused_clearly(gh, app_key, tmp_path):
    gh.register_app(42, public_pem(app_key), installation_ids=(7,))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem(other))
    client = ForgeClient(api_url=gh.url, app_id=42, app_key_file=str(key_file), installation_id=7)
    with pytest.raises(ForgeError) as error:
        client.pulls(REPO)
    assert error.value.status == 401
    assert str(error.value).startswith("GitHub answered 401 A JSON web token could not be decoded to POST "
                                       "/app/installations/7/access_tokens")
    key_file.write_text("not a key")
    with pytest.raises(ForgeError, match=r"cannot sign a GitHub App JWT with the key in app_key_file .*app.pem"):
        ForgeClient(api_url=gh.url, app_id=42, app_key_file=str(key_file), installation_id=7)
    with pytest.raises(ForgeError, match="app_id, app_key_file and installation_id together"):
        ForgeClient(api_url=gh.url, app_id=42, app_key_file=str(key_file))


def test_bad_settings_are_refused_without_echoing_secrets(gh, tmp_path):
    with pytest.raises(ForgeError, match="only one of token, token_file and app_id"):
        ForgeClient(api_url=gh.url, token="a", token_file="/nonexistent")
    with pytest.raises(ForgeError, match="cannot read the GitHub token file /nonexistent: No such file or directory"):
        ForgeClient(api_url=gh.url, token_file="/nonexistent")
    spaced = tmp_path / "token"
    spaced.write_text("ghp_half secret\n")
    with pytest.raises(ForgeError) as error:
        ForgeClient(api_url=gh.url, token_file=str(spaced))
    assert "whitespace" in str(error.value) and "secret" not in str(error.value).replace(str(spaced), "")
    with pytest.raises(ForgeError) as error:
        ForgeClient(api_url="https://user:hunter2@github.example.org/api/v3", token="x")
    assert "hunter2" not in str(error.value) and "must not contain credentials" in str(error.value)
    with pytest.raises(ForgeError, match="api_url must be an http"):
        ForgeClient(api_url="ftp://example.org", token="x")


def test_no_secret_reaches_an_exception_or_the_log(gh, token_file, app_key, tmp_path, caplog):
    """Provoke every kind of failure with a token, a hook secret and an app installation token
    in play, with every logger at DEBUG (PyGithub's too): none of them may show up."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="github.Requester")
    hook_secret = "hook-s3cret-value"
    messages = []

    def provoke(call):
        try:
            call()
        except ForgeError as exc:
            messages.extend([str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__)])

    add_pulls(gh, 1)
    client = ForgeClient(api_url=gh.url, token_file=token_file, max_wait=1, retries=1, sleep=Sleeps())
    provoke(lambda: client.pull(REPO, 99))
    provoke(lambda: client.create_status(REPO, SHA, "bogus", "ci"))
    gh.inject("*", "", 403, times=1)
    provoke(lambda: client.pull(REPO, 1))
    gh.inject("*", "", 502, times=2)
    provoke(lambda: client.pull(REPO, 1))
    client.create_hook(REPO, "https://ci/hook", hook_secret, ["push"])
    provoke(lambda: client.create_hook(REPO, "https://ci/hook", hook_secret, ["push"]))
    provoke(lambda: client.update_hook(REPO, 12345, "https://ci/hook", hook_secret, ["push"], "json", True, False))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = "http://127.0.0.1:%d" % sock.getsockname()[1]
    provoke(lambda: ForgeClient(api_url=closed, token_file=token_file, retries=0).pulls(REPO))

    gh.register_app(42, public_pem(app_key), installation_ids=(7,))
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem(app_key))
    app = ForgeClient(api_url=gh.url, app_id=42, app_key_file=str(key_file), installation_id=7)
    provoke(lambda: app.pull(REPO, 99))

    assert len(messages) == 4 * 8
    assert len(gh.installation_tokens()) == 1
    logged = caplog.text + "".join(str(record.__dict__) for record in caplog.records)
    assert "github.Requester" in {record.name for record in caplog.records}  # PyGithub did log
    secrets = [gh.token, hook_secret, gh.installation_tokens()[0], pem(app_key).splitlines()[1]]
    for secret in secrets:
        assert not any(secret in message for message in messages)
        assert secret not in logged
