"""The fake GitHub server itself (tests/fake_github/), over real HTTP: what other tests rely on."""

import base64
import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import fake_github

REPO = "testfleet-example/widget"
SHA = "1" * 40


@pytest.fixture
def gh(fake_github):
    fake_github.add_repo(REPO)
    fake_github.set_branch(REPO, "main", "a" * 40)
    return fake_github


def get(gh, path, token=None, **headers):
    headers.setdefault("Authorization", "token " + (token or gh.token))
    return requests.get(gh.url + path, headers=headers, timeout=10)


def send(gh, method, path, body=None):
    return requests.request(method, gh.url + path, json=body, timeout=10,
                            headers={"Authorization": "Bearer " + gh.token})


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(key, claims, alg="RS256"):
    signing_input = "%s.%s" % (b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode()),
                               b64url(json.dumps(claims).encode()))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


@pytest.fixture(scope="module")
def app_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_lists_are_paginated_with_absolute_links_under_the_base_url(gh):
    for number in range(1, 76):
        gh.add_pull(REPO, number, "%040x" % number)
    first = get(gh, "/repos/%s/pulls?state=open&per_page=30" % REPO)
    assert first.status_code == 200
    assert [p["number"] for p in first.json()] == list(range(75, 45, -1))  # newest first
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', first.headers["Link"]))
    assert links["next"] == gh.url + "/repos/%s/pulls?state=open&per_page=30&page=2" % REPO
    assert links["last"].endswith("page=3")
    last = requests.get(links["last"], headers={"Authorization": "token " + gh.token}, timeout=10)
    assert [p["number"] for p in last.json()] == list(range(15, 0, -1))
    assert 'rel="next"' not in last.headers["Link"] and 'rel="prev"' in last.headers["Link"]


def test_bodies_are_shaped_like_githubs_with_urls_under_the_base_url(gh):
    gh.add_pull(REPO, 7, SHA, author="bob", author_association="CONTRIBUTOR", labels=["no-test"], draft=True)
    pull = get(gh, "/repos/%s/pulls/7" % REPO).json()
    assert pull["url"] == gh.url + "/repos/%s/pulls/7" % REPO
    assert (pull["number"], pull["state"], pull["draft"], pull["merged"]) == (7, "open", True, False)
    assert pull["head"]["sha"] == SHA and pull["head"]["repo"]["full_name"] == REPO
    assert pull["base"]["ref"] == "main" and pull["base"]["sha"] == "a" * 40
    assert pull["user"]["login"] == "bob" and pull["user"]["url"] == gh.url + "/users/bob"
    assert pull["author_association"] == "CONTRIBUTOR"
    assert [label["name"] for label in pull["labels"]] == ["no-test"]
    assert base64.b64decode(pull["node_id"]).decode() == "011:PullRequest%d" % pull["id"]
    api_urls = re.findall(r'"(https?://[^"]+)"', json.dumps(pull))
    assert all(url.startswith((gh.url, "https://github.com/", "https://avatars.")) for url in api_urls)


def test_a_matching_if_none_match_is_a_304_that_costs_nothing(gh):
    first = get(gh, "/repos/%s" % REPO)
    remaining = int(first.headers["X-RateLimit-Remaining"])
    again = get(gh, "/repos/%s" % REPO, **{"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    assert int(again.headers["X-RateLimit-Remaining"]) == remaining
    assert again.headers["ETag"] == first.headers["ETag"]
    other = get(gh, "/repos/%s" % REPO, **{"If-None-Match": 'W/"stale"'})
    assert other.status_code == 200 and int(other.headers["X-RateLimit-Remaining"]) == remaining - 1
    assert gh.counted == 2
    assert [r["counted"] for r in gh.requests] == [True, False, True]
    assert gh.requests[1]["headers"]["If-None-Match"] == first.headers["ETag"]


def test_the_etag_changes_with_the_body(gh):
    gh.add_pull(REPO, 1, SHA)
    etag = get(gh, "/repos/%s/pulls" % REPO).headers["ETag"]
    gh.update_pull(REPO, 1, labels=["bug"])
    changed = get(gh, "/repos/%s/pulls" % REPO, **{"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag


def test_credentials_are_checked_and_recorded_masked(gh):
    assert get(gh, "/repos/%s" % REPO, token="wrong").status_code == 401
    missing = requests.get(gh.url + "/repos/%s" % REPO, timeout=10)
    assert missing.status_code == 401 and missing.json()["message"] == "Requires authentication"
    assert get(gh, "/repos/%s" % REPO, Authorization="Bearer " + gh.token).status_code == 200
    assert [r["headers"].get("Authorization") for r in gh.requests] == [
        "token ********", None, "Bearer ********"]
    assert gh.token not in json.dumps(gh.requests)


def test_unknown_things_are_githubs_404(gh):
    for path in ("/repos/nobody/nothing", "/repos/%s/pulls/99" % REPO, "/repos/%s/hooks/5" % REPO,
                 "/repos/%s/issues/3/comments" % REPO, "/nowhere"):
        answer = get(gh, path)
        assert answer.status_code == 404, path
        assert answer.json()["message"] == "Not Found"
        assert answer.json()["documentation_url"].startswith("https://docs.github.com/")
    assert get(gh, "/repos/%s/branches/nope" % REPO).json()["message"] == "Branch not found"


def test_statuses_are_validated_like_github(gh):
    def post(**body):
        return send(gh, "POST", "/repos/%s/statuses/%s" % (REPO, SHA), dict({"context": "ci"}, **body))

    bad_state = post(state="queued")
    assert bad_state.status_code == 422
    assert bad_state.json()["message"] == "Validation Failed"
    assert bad_state.json()["errors"][0]["field"] == "state"
    too_long = post(state="pending", description="x" * 141)
    assert too_long.status_code == 422
    assert too_long.json()["errors"][0]["message"] == "description is too long (maximum is 140 characters)"
    assert post(state="pending", description="x" * 140).status_code == 201
    unknown = send(gh, "POST", "/repos/%s/statuses/nothex" % REPO, {"state": "success"})
    assert unknown.status_code == 422 and unknown.json()["message"] == "No commit found for SHA: nothex"
    for number in range(999):
        gh.post_status(REPO, SHA, "pending", "ci", description=str(number))
    full = post(state="success")
    assert full.status_code == 422
    assert "reached the maximum number of statuses" in full.json()["errors"][0]["message"]
    assert post(state="success", context="other").status_code == 201


def test_the_combined_status_holds_the_newest_status_of_each_context(gh):
    assert get(gh, "/repos/%s/commits/%s/status" % (REPO, SHA)).json()["state"] == "pending"
    gh.post_status(REPO, SHA, "pending", "a", description="queued")
    gh.post_status(REPO, SHA, "success", "a", description="done")
    gh.post_status(REPO, SHA, "success", "b")
    combined = get(gh, "/repos/%s/commits/%s/status" % (REPO, SHA)).json()
    assert combined["state"] == "success" and combined["sha"] == SHA and combined["total_count"] == 2
    assert {s["context"]: s["description"] for s in combined["statuses"]} == {"a": "done", "b": None}
    assert "creator" not in combined["statuses"][0]  # as on GitHub: only the statuses list names it
    gh.post_status(REPO, SHA, "error", "b")
    assert get(gh, "/repos/%s/commits/main/status" % REPO).json()["state"] == "pending"  # main is a...a
    assert get(gh, "/repos/%s/commits/%s/status" % (REPO, SHA)).json()["state"] == "failure"
    listed = get(gh, "/repos/%s/commits/%s/statuses" % (REPO, SHA)).json()
    assert [s["state"] for s in listed] == ["error", "success", "success", "pending"]  # newest first
    assert listed[0]["creator"]["login"] == gh.login
    assert [s["description"] for s in gh.statuses(REPO, SHA, context="a")] == ["queued", "done"]


def test_comments_permissions_and_org_membership(gh):
    gh.add_pull(REPO, 3, SHA)
    gh.add_comment(REPO, 3, "/retest", "carol")
    posted = send(gh, "POST", "/repos/%s/issues/3/comments" % REPO, {"body": "queued"})
    assert posted.status_code == 201 and posted.json()["user"]["login"] == gh.login
    comments = get(gh, "/repos/%s/issues/3/comments" % REPO).json()
    assert [(c["user"]["login"], c["body"]) for c in comments] == [("carol", "/retest"), (gh.login, "queued")]
    later = get(gh, "/repos/%s/issues/3/comments?since=2999-01-01T00:00:00Z" % REPO).json()
    assert later == []
    gh.set_permission(REPO, "carol", "maintain")
    answer = get(gh, "/repos/%s/collaborators/carol/permission" % REPO).json()
    assert (answer["permission"], answer["role_name"]) == ("write", "maintain")
    assert get(gh, "/repos/%s/collaborators/dave/permission" % REPO).json()["role_name"] == "read"
    gh.add_org_member("testfleet-example", "carol")
    assert get(gh, "/orgs/testfleet-example/members/carol").status_code == 204
    assert get(gh, "/orgs/testfleet-example/members/dave").status_code == 404
    assert get(gh, "/orgs/elsewhere/members/carol").status_code == 404


def test_a_hook_secret_is_stored_but_never_returned(gh):
    created = send(gh, "POST", "/repos/%s/hooks" % REPO, {
        "name": "web", "events": ["push"], "config": {"url": "https://ci/hook", "content_type": "json",
                                                      "secret": "s3cret", "insecure_ssl": "0"}})
    assert created.status_code == 201
    hook = created.json()
    assert hook["config"] == {"url": "https://ci/hook", "content_type": "json", "insecure_ssl": "0",
                              "secret": "********"}
    assert "s3cret" not in get(gh, "/repos/%s/hooks" % REPO).text
    assert "s3cret" not in get(gh, "/repos/%s/hooks/%d" % (REPO, hook["id"])).text
    assert gh.hooks(REPO)[0]["config"]["secret"] == "s3cret"
    duplicate = send(gh, "POST", "/repos/%s/hooks" % REPO, {"config": {"url": "https://ci/hook"}})
    assert duplicate.status_code == 422
    # a PATCH without config keeps it; one with a config without secret drops the secret
    send(gh, "PATCH", "/repos/%s/hooks/%d" % (REPO, hook["id"]), {"active": False})
    assert gh.hooks(REPO)[0]["config"]["secret"] == "s3cret" and gh.hooks(REPO)[0]["active"] is False
    send(gh, "PATCH", "/repos/%s/hooks/%d" % (REPO, hook["id"]), {"config": {"url": "https://ci/hook"}})
    assert "secret" not in gh.hooks(REPO)[0]["config"]
    assert send(gh, "DELETE", "/repos/%s/hooks/%d" % (REPO, hook["id"])).status_code == 204
    assert gh.hooks(REPO) == []


def test_injected_faults_answer_the_next_matching_requests(gh):
    gh.inject("GET", r"/pulls$", 502, times=2)
    gh.inject("*", r"^/repos/%s$" % REPO, 403, headers={"Retry-After": "5"})
    assert [get(gh, "/repos/%s/pulls" % REPO).status_code for attempt in range(3)] == [502, 502, 200]
    limited = get(gh, "/repos/%s" % REPO)
    assert limited.status_code == 403 and limited.headers["Retry-After"] == "5"
    assert "secondary rate limit" in limited.json()["message"]
    assert get(gh, "/repos/%s" % REPO).status_code == 200
    gh.inject("GET", "/hooks", 404, times=None, body={"message": "Gone fishing"})
    assert [get(gh, "/repos/%s/hooks" % REPO).json() for attempt in range(2)] == [{"message": "Gone fishing"}] * 2
    gh.clear_injections()
    assert get(gh, "/repos/%s/hooks" % REPO).status_code == 200
    assert gh.counted == 8


def test_the_rate_limit_counts_down_and_runs_out(gh):
    gh.set_rate_limit(remaining=2, reset=int(time.time()) + 100)
    assert get(gh, "/repos/%s" % REPO).headers["X-RateLimit-Remaining"] == "1"
    last = get(gh, "/repos/%s" % REPO)
    assert (last.headers["X-RateLimit-Remaining"], last.headers["X-RateLimit-Used"]) == ("0", "5000")
    refused = get(gh, "/repos/%s" % REPO)
    assert refused.status_code == 403 and refused.json()["message"].startswith("API rate limit exceeded")
    assert refused.headers["X-RateLimit-Reset"] == str(gh.rate_limit["reset"])
    rate = get(gh, "/rate_limit").json()  # free, even now
    assert rate["resources"]["core"]["remaining"] == 0 and gh.counted == 3


def test_the_rate_limit_window_follows_the_clock():
    now = [1_700_000_000.0]
    with fake_github.FakeGitHub(clock=lambda: now[0]) as gh:
        gh.add_repo(REPO)
        assert get(gh, "/repos/%s" % REPO).headers["X-RateLimit-Reset"] == str(1_700_000_000 + 3600)
        assert gh.rate_limit["used"] == 1
        now[0] += 3600
        answer = get(gh, "/repos/%s" % REPO)
        assert answer.headers["X-RateLimit-Remaining"] == "4999"
        assert answer.headers["X-RateLimit-Reset"] == str(1_700_000_000 + 7200)
        assert answer.json()["created_at"] == "2023-11-14T22:13:20Z"


def test_an_app_gets_an_installation_token_with_a_signed_jwt(gh, app_key):
    gh.register_app(42, public_pem(app_key), installation_ids=(7,))
    now = int(time.time())
    jwt = make_jwt(app_key, {"iat": now - 60, "exp": now + 300, "iss": "42"})
    answer = requests.post(gh.url + "/app/installations/7/access_tokens", timeout=10,
                           headers={"Authorization": "Bearer " + jwt})
    assert answer.status_code == 201
    token = answer.json()["token"]
    assert answer.json()["expires_at"].endswith("Z") and gh.installation_tokens() == [token]
    gh.add_pull(REPO, 1, SHA)
    assert get(gh, "/repos/%s/pulls/1" % REPO, token=token).status_code == 200
    assert send(gh, "POST", "/repos/%s/issues/1/comments" % REPO, {"body": "hi"}).status_code == 201
    posted = requests.post(gh.url + "/repos/%s/issues/1/comments" % REPO, json={"body": "hi"}, timeout=10,
                           headers={"Authorization": "token " + token})
    assert posted.json()["user"]["login"] == "testfleet-app[bot]"
    assert posted.json()["user"]["type"] == "Bot"


@pytest.mark.parametrize("case", ["other key", "expired", "too long", "unknown app", "not a jwt", "token",
                                  "other installation"])
def test_app_credentials_that_github_refuses(gh, app_key, case):
    gh.register_app(42, public_pem(app_key), installation_ids=(7,))
    now = int(time.time())
    claims = {"iat": now - 60, "exp": now + 300, "iss": "42"}
    key, installation, scheme = app_key, 7, "Bearer"
    if case == "other key":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif case == "expired":
        claims.update(iat=now - 700, exp=now - 100)
    elif case == "too long":
        claims.update(exp=now + 3600)
    elif case == "unknown app":
        claims.update(iss="43")
    elif case == "other installation":
        installation = 8
    credential = make_jwt(key, claims)
    if case == "not a jwt":
        credential = "abc.def"
    elif case == "token":
        scheme, credential = "token", gh.token
    answer = requests.post(gh.url + "/app/installations/%d/access_tokens" % installation, timeout=10,
                           headers={"Authorization": "%s %s" % (scheme, credential)})
    assert answer.status_code == (404 if case == "other installation" else 401)
    assert gh.installation_tokens() == []


def test_it_runs_alone_from_the_command_line():
    package = os.path.dirname(fake_github.__file__)  # python tests/fake_github ...
    process = subprocess.Popen([sys.executable, package, "--port", "0", "--repo", REPO],
                               stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(process.stdout.readline())
        answer = requests.get(started["url"] + "/repos/" + REPO, timeout=10,
                              headers={"Authorization": "token " + started["token"]})
        assert answer.status_code == 200 and answer.json()["full_name"] == REPO
    finally:
        process.terminate()
        process.wait(10)
