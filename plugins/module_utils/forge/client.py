# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The forge client: testfleet's one way to GitHub's REST API, spending as little rate limit as it can.

Everything that reads or writes GitHub (the scanner, the ``github_status`` and
``github_webhook`` modules, the operator CLI) goes through :class:`ForgeClient`, which answers
plain dicts and raises :class:`ForgeError` (with ``.status``, the HTTP status or None) worded
for the person who has to act, never carrying a token, a key or a hook secret.

How it is built on PyGithub (2.x)
    PyGithub's ``Requester`` (``Github(...).requester``, which PyGithub offers for endpoints
    it does not wrap) is the transport: it adds the credentials (``github.Auth.Token``, or
    ``github.Auth.AppAuth``, which signs the app's RS256 JWT), the user agent and the base
    URL, and keeps a pooled ``requests`` session. Its ``requestJson()`` returns the status,
    headers and body of one exchange without interpreting them, and this client does the rest
    above it (the answers it reads, the dicts it returns and the ETag cache are
    ``forge/wire.py``):

    - conditional requests: every GET whose ETag is cached is sent with ``If-None-Match``; a
      304 (which GitHub does not count against the rate limit) is answered from the cached
      body. Pagination is done here (``per_page=100``, following ``Link: rel="next"``) so that
      every page is its own conditional request and an unchanged list costs nothing. The
      ``Link`` header is cached with the body, as a 304 need not carry it, and a full page
      answered from the cache without a next link is followed by a probe of the next page,
      so an item that appeared only on a later page is not missed.
    - the rate limit: ``X-RateLimit-Remaining``/``Reset`` of every answer are kept; below
      ``min_remaining`` the next request waits for the reset, at most ``max_wait`` seconds,
      else :class:`ForgeError` says when the limit resets. A 403/429 with ``Retry-After``, a
      used-up primary limit or a secondary rate limit waits as GitHub asks (bounded the same
      way) and retries; 502/503/504 and connection failures are retried with exponential
      backoff; at most ``retries`` retries per request. Waiting goes through ``sleep``.
    - GitHub App authentication: the installation token is fetched here (``POST
      /app/installations/{id}/access_tokens`` with the JWT PyGithub signs, through the same
      retry and accounting path) and renewed five minutes before it expires.

    Why not PyGithub's object layer (``repo.get_pulls()``...) with a transport hook: PyGithub
    2.10 has no per-client hook into its HTTP layer. Its connection classes can only be
    swapped process-wide (``Requester.injectConnectionClasses``, which also turns connection
    reuse off for every client), its objects never send ``If-None-Match`` nor let a 304
    through, and a lazily completed object issues GETs of its own that are easy to miss when
    counting requests. The few endpoints testfleet needs are simple to read as JSON.

``stats``: ``requests`` (HTTP exchanges), ``counted`` (answers that were not 304: what the
rate limit counts), ``not_modified`` (304s) and ``writes`` (requests other than GET).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import logging
import math
import re
import threading
import time
from collections import namedtuple
from urllib.parse import quote, urlencode, urlsplit

try:
    import github
    import github.Auth
    import requests
    import urllib3
    HAS_GITHUB = True
    GITHUB_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    github = requests = urllib3 = None
    HAS_GITHUB = False
    GITHUB_IMPORT_ERROR = exc

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.forge import wire
from ansible_collections.testfleet.infra.plugins.module_utils import redact
from ansible_collections.testfleet.infra.plugins.module_utils.forge.wire import ForgeError

DEFAULT_API_URL = "https://api.github.com"
API_VERSION = "2022-11-28"
USER_AGENT = "testfleet-forge"
PER_PAGE = 100
MAX_PAGES = 1000
TRANSIENT_STATUSES = (502, 503, 504)
BACKOFF = 1.0                  # seconds before the first retry of a transient failure; doubles
SECONDARY_LIMIT_WAIT = 60.0    # GitHub: wait at least a minute after a secondary limit
TOKEN_RENEWAL_MARGIN = 300     # renew an installation token this many seconds before it expires
PULL_STATES = ("open", "closed", "all")
ROLES = ("admin", "maintain", "write", "triage", "read", "none")
CONTENT_TYPES = ("json", "form")

LOG = logging.getLogger("testfleet.forge")
_REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")

Reply = namedtuple("Reply", "status headers data not_modified")


def _check_repo(repo):
    if not isinstance(repo, str) or not _REPO_RE.match(repo):
        raise ForgeError("repository must be written owner/name, not %r" % (repo,))
    return repo


def _check_api_url(api_url):
    parts = urlsplit(str(api_url or ""))
    if parts.username is not None or parts.password is not None:
        raise ForgeError("api_url must not contain credentials (use token_file or a GitHub App)")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ForgeError("api_url must be an http(s) URL like %s, not %r" % (DEFAULT_API_URL, api_url))
    return api_url.rstrip("/")


def _read_secret(path, what):
    try:
        return files.read_secret(path, what)
    except files.FileProblem as exc:
        raise ForgeError(str(exc)) from None


def _check_token(token, source):
    token = token.strip()
    if not token:
        raise ForgeError("the GitHub token from %s is empty" % source)
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in token):
        raise ForgeError("the GitHub token from %s contains whitespace or control characters" % source)
    return token


class ForgeClient:
    """GitHub's REST API for testfleet: see the module docstring.

    Credentials: ``token`` or ``token_file`` (a personal access or installation token), or a
    GitHub App (``app_id``, ``app_key_file`` holding its private key in PEM, and
    ``installation_id``); with none of them, requests are anonymous.
    """

    def __init__(self, api_url=DEFAULT_API_URL, token=None, token_file=None, app_id=None, app_key_file=None,
                 installation_id=None, etag_cache_dir=None, min_remaining=50, max_wait=60.0, retries=3,
                 timeout=30.0, sleep=time.sleep):
        if not HAS_GITHUB:
            raise ForgeError("the PyGithub Python library is required (%s)" % GITHUB_IMPORT_ERROR)
        self.api_url = _check_api_url(api_url)
        self.min_remaining = int(min_remaining)
        self.max_wait = float(max_wait)
        self.retries = int(retries)
        self.timeout = float(timeout)
        self.stats = {"requests": 0, "counted": 0, "not_modified": 0, "writes": 0}
        self._sleep = sleep
        self._lock = threading.RLock()
        self._secrets = set()
        self._remaining = None
        self._reset = None
        self._org_members = {}
        self._app = None
        self._requester = None
        wire.guard_pygithub_log()

        given = [name for name, value in (("token", token), ("token_file", token_file), ("app_id", app_id))
                 if value is not None]
        if len(given) > 1:
            raise ForgeError("give only one of token, token_file and app_id, not %s" % " and ".join(given))
        if token_file is not None:
            token = _check_token(_read_secret(token_file, "GitHub token"), "token_file %s" % token_file)
        elif token is not None:
            token = _check_token(token, "the token option")
        if token is not None:
            self._secrets.add(token)
            self._identity = "token:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
            self._requester = self._make_requester(github.Auth.Token(token))
        elif app_id is not None:
            self._identity = "app:%s/%s" % (app_id, installation_id)
            self._app = self._app_settings(app_id, app_key_file, installation_id)
        else:
            self._identity = "anonymous"
            self._requester = self._make_requester(None)
        self._cache = wire.EtagCache(etag_cache_dir)

    def _make_requester(self, auth):
        client = github.Github(auth=auth, base_url=self.api_url, timeout=max(int(math.ceil(self.timeout)), 1),
                               user_agent=USER_AGENT, per_page=PER_PAGE, retry=None,
                               seconds_between_requests=0, seconds_between_writes=0)
        return client.requester

    def _app_settings(self, app_id, app_key_file, installation_id):
        if app_key_file is None or installation_id is None:
            raise ForgeError("a GitHub App needs app_id, app_key_file and installation_id together")
        try:
            installation_id = int(installation_id)
        except (TypeError, ValueError):
            raise ForgeError("installation_id must be a number, not %r" % (installation_id,)) from None
        key = _read_secret(app_key_file, "GitHub App key")
        self._secrets.add(key)
        try:
            auth = github.Auth.AppAuth(str(app_id), key)
            auth.create_jwt()
        except Exception as exc:  # pylint: disable=broad-except
            # PyJWT and cryptography raise many kinds of errors for a bad key
            raise ForgeError("cannot sign a GitHub App JWT with the key in app_key_file %s (%s): is it the "
                             "app's private key in PEM?" % (app_key_file, exc.__class__.__name__)) from None
        return {"id": str(app_id), "installation": installation_id, "requester": self._make_requester(auth),
                "token": None, "expires": 0}

    # ------------------------------------------------------------------ transport
    def _redact(self, text):
        return redact.hide(text, self._secrets)

    def _current_requester(self):
        if self._app is None:
            return self._requester
        with self._lock:
            if self._app["token"] is None or time.time() >= self._app["expires"] - TOKEN_RENEWAL_MARGIN:
                self._renew_installation_token()
            return self._requester

    def _renew_installation_token(self):
        app = self._app
        path = "/app/installations/%d/access_tokens" % app["installation"]
        reply = self._request("POST", self.api_url + path, requester=app["requester"], ok=(201,))
        data = reply.data if isinstance(reply.data, dict) else {}
        token = data.get("token")
        if not isinstance(token, str) or not token:
            raise ForgeError("GitHub answered POST %s without an installation token" % path)
        self._secrets.add(token)
        try:
            expires = wire.epoch(data.get("expires_at") or "")
        except ValueError:
            expires = time.time() + 3600
        app["token"], app["expires"] = token, expires
        self._requester = self._make_requester(github.Auth.Token(token))
        LOG.debug("got an installation token of GitHub App %s, valid until %s", app["id"], wire.iso(expires))

    def _note_rate(self, headers):
        remaining, reset = wire.int_header(headers, "x-ratelimit-remaining"), wire.int_header(headers, "x-ratelimit-reset")
        if remaining is not None:
            with self._lock:
                self._remaining, self._reset = remaining, reset

    def _respect_budget(self, method, path):
        """Wait for the rate-limit reset when fewer than ``min_remaining`` requests are left."""
        with self._lock:
            remaining, reset = self._remaining, self._reset
        if remaining is None or reset is None or remaining >= self.min_remaining:
            return
        wait = reset - time.time() + 1
        if wait > 0:
            if wait > self.max_wait:
                raise ForgeError(
                    "only %d GitHub API requests are left (min_remaining is %d) and the rate limit resets at %s, "
                    "in %d s: longer than max_wait (%g s); %s %s was not sent"
                    % (remaining, self.min_remaining, wire.iso(reset), math.ceil(wait), self.max_wait, method, path),
                    retry_at=reset)
            LOG.info("%d GitHub API requests left: waiting %.0f s for the reset at %s", remaining, wait, wire.iso(reset))
            self._sleep(wait)
        with self._lock:
            self._remaining = None

    def _retry_wait(self, method, path, status, headers, data, attempt):
        """Seconds to wait before retrying this answer, or None when retrying cannot help."""
        message = data.get("message") if isinstance(data, dict) else None
        retry_after = wire.retry_after(headers)
        if status in (403, 429):
            reset = wire.int_header(headers, "x-ratelimit-reset")
            if retry_after is not None:
                wait, why = retry_after, "asks to retry after %d s (Retry-After)" % math.ceil(retry_after)
            elif headers.get("x-ratelimit-remaining") == "0" and reset is not None:
                wait = max(reset - time.time(), 0) + 1
                why = "says the rate limit is used up until %s" % wire.iso(reset)
            elif message and "secondary rate limit" in message.lower():
                wait = SECONDARY_LIMIT_WAIT * 2 ** attempt
                why = "reports a secondary rate limit (wait %d s)" % wait
            else:
                return None
            if wait > self.max_wait:
                raise ForgeError(self._redact(
                    "GitHub answered %d to %s %s and %s: longer than max_wait (%g s); retry after %s"
                    % (status, method, path, why, self.max_wait, wire.iso(time.time() + wait))),
                    status=status, retry_at=time.time() + wait)
            return wait
        if status in TRANSIENT_STATUSES:
            return min(BACKOFF * 2 ** attempt if retry_after is None else retry_after, self.max_wait)
        return None

    def _http_error(self, method, path, status, data, attempt):
        message = data.get("message") if isinstance(data, dict) else None
        said = message or http.client.responses.get(status, "")
        text = "GitHub answered %d %s to %s %s" % (status, said, method, path)
        details = []
        for error in (data.get("errors") if isinstance(data, dict) else None) or ():
            if isinstance(error, dict):
                details.append(error.get("message") or " ".join(
                    str(error[k]) for k in ("resource", "field", "code") if error.get(k)))
            else:
                details.append(str(error))
        if details:
            text += ": " + "; ".join(details)
        if status == 401:
            text += " (the credentials are wrong, expired or revoked)"
        elif status == 404:
            text += " (it does not exist, or these credentials cannot see it)"
        elif status == 403:
            text += " (these credentials lack a permission)"
        if attempt:
            text += " after %d retries" % attempt
        return ForgeError(self._redact(text), status=status)

    def _request(self, method, url, body=None, ok=(), requester=None):
        """One request with conditional GETs, rate-limit waits and retries: a :data:`Reply`.

        Answers 2xx and the statuses in ``ok`` are returned; others raise :class:`ForgeError`.
        """
        if not url.startswith(self.api_url + "/"):
            raise ForgeError("not sending a request outside %s" % self.api_url)
        path = url[len(self.api_url):]
        key = "%s %s" % (self._identity, url) if method == "GET" else None
        attempt = 0
        while True:
            self._respect_budget(method, path)
            cached = self._cache.get(key) if key else None
            headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}
            if cached:
                headers["If-None-Match"] = cached["etag"]
            try:
                status, answer_headers, text = (requester or self._current_requester()).requestJson(
                    method, url, headers=headers, input=body)
            except requests.exceptions.RequestException as exc:
                self._count(method, None)
                if attempt < self.retries and (method != "POST" or self._not_sent(exc)):
                    wait = min(BACKOFF * 2 ** attempt, self.max_wait)
                    LOG.info("%s %s failed (%s): retrying in %g s", method, path, exc.__class__.__name__, wait)
                    self._sleep(wait)
                    attempt += 1
                    continue
                raise ForgeError(self._redact("cannot reach GitHub at %s (%s %s): %s: %s" % (
                    self.api_url, method, path, exc.__class__.__name__, exc))) from None
            self._count(method, status)
            self._note_rate(answer_headers)
            LOG.debug("%s %s: %d", method, path, status)
            if status == 304 and cached:
                link = answer_headers.get("link") or cached.get("link")
                return Reply(200, dict(answer_headers, link=link), json.loads(cached["body"]), True)
            try:
                data = json.loads(text) if text else None
            except ValueError:
                data = None
            if 200 <= status < 300 or status in ok:
                if key and status == 200 and answer_headers.get("etag") and text:
                    self._cache.put(key, answer_headers["etag"], text, answer_headers.get("link"))
                return Reply(status, answer_headers, data, False)
            wait = self._retry_wait(method, path, status, answer_headers, data, attempt)
            if wait is None or attempt >= self.retries:
                raise self._http_error(method, path, status, data, attempt)
            LOG.info("%s %s: GitHub answered %d; retrying in %.0f s", method, path, status, wait)
            self._sleep(wait)
            attempt += 1

    def _count(self, method, status):
        """Account for one exchange (``status`` None: no answer)."""
        with self._lock:
            self.stats["requests"] += 1
            if method != "GET":
                self.stats["writes"] += 1
            if status == 304:
                self.stats["not_modified"] += 1
            elif status is not None:
                self.stats["counted"] += 1

    @staticmethod
    def _not_sent(exc):
        """Whether a failed request surely never reached GitHub (so a POST may be repeated)."""
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return True
        reason = getattr(exc.args[0] if exc.args else None, "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)

    def _url(self, path, params=None):
        url = self.api_url + path
        if params:
            url += "?" + urlencode([(k, v) for k, v in params.items() if v is not None])
        return url

    def _get(self, path, params=None, ok=()):
        return self._request("GET", self._url(path, params), ok=ok)

    def _get_pages(self, path, params=None, items=None):
        """Every page of a list (``items``: the key holding it in each page), as page bodies."""
        url = self._url(path, dict(params or {}, per_page=PER_PAGE))
        pages, seen = [], set()
        while url:
            if url in seen or len(seen) >= MAX_PAGES:
                raise ForgeError("GitHub's pages of GET %s do not end" % path)
            seen.add(url)
            reply = self._request("GET", url)
            listed = reply.data.get(items) if items and isinstance(reply.data, dict) else reply.data
            if not isinstance(listed, list):
                raise ForgeError("GitHub answered GET %s with something that is not a list" % url[len(self.api_url):])
            pages.append(reply.data)
            next_url = wire.next_link(reply.headers.get("link"))
            if next_url is None and reply.not_modified and len(listed) >= PER_PAGE:
                # a full page from the cache: a later page may have appeared since it was stored
                next_url = wire.page_after(url)
            url = next_url
        return pages

    # ------------------------------------------------------------------ the API
    def pulls(self, repo, state="open"):
        """The pull requests of ``repo`` in ``state`` (open, closed, all): every page, as pull dicts."""
        _check_repo(repo)
        if state not in PULL_STATES:
            raise ForgeError("state must be one of %s, not %r" % (", ".join(PULL_STATES), state))
        result, numbers = [], set()
        for page in self._get_pages("/repos/%s/pulls" % repo, {"state": state}):
            for data in page:
                if isinstance(data, dict) and data.get("number") not in numbers:
                    numbers.add(data.get("number"))
                    result.append(wire.pull_dict(data))
        return result

    def pull(self, repo, number):
        """Pull request ``number`` of ``repo`` as a pull dict."""
        return wire.pull_dict(self._get("/repos/%s/pulls/%d" % (_check_repo(repo), int(number))).data)

    def branch_sha(self, repo, branch):
        """The SHA ``branch`` of ``repo`` points at."""
        data = self._get("/repos/%s/branches/%s" % (_check_repo(repo), quote(branch))).data
        return data["commit"]["sha"]

    def default_branch(self, repo):
        """The name of ``repo``'s default branch."""
        data = self._get("/repos/%s" % _check_repo(repo)).data
        return data["default_branch"]

    def branches(self, repo):
        """Every branch of ``repo``: a list of ``{"name", "sha"}``."""
        pages = self._get_pages("/repos/%s/branches" % _check_repo(repo))
        return [{"name": data.get("name"), "sha": (data.get("commit") or {}).get("sha")}
                for page in pages for data in page if isinstance(data, dict)]

    def ref_sha(self, repo, branch):
        """The SHA ``branch`` points at, or None when there is no such branch."""
        reply = self._get("/repos/%s/git/ref/heads/%s" % (_check_repo(repo), quote(branch)), ok=(404,))
        if reply.status == 404:
            return None
        return reply.data["object"]["sha"]

    def create_branch(self, repo, branch, sha):
        """Create ``branch`` at commit ``sha`` (GitHub answers 422 when it exists)."""
        self._request("POST", self._url("/repos/%s/git/refs" % _check_repo(repo)),
                      body={"ref": "refs/heads/" + branch, "sha": sha})

    def move_branch(self, repo, branch, sha, force=False):
        """Point ``branch`` at ``sha``; without ``force`` only a fast-forward is accepted."""
        self._request("PATCH", self._url("/repos/%s/git/refs/heads/%s" % (_check_repo(repo), quote(branch))),
                      body={"sha": sha, "force": bool(force)})

    def file(self, repo, path, ref):
        """File ``path`` of ``repo`` at ``ref`` (branch, tag or SHA): ``{"content": bytes, "sha":
        its blob SHA}``, or None when the file (or the ref) does not exist."""
        reply = self._get("/repos/%s/contents/%s" % (_check_repo(repo), quote(path.lstrip("/"))), {"ref": ref},
                          ok=(404,))
        if reply.status == 404:
            return None
        data = reply.data
        if not isinstance(data, dict) or data.get("type") != "file":
            raise ForgeError("%s of %s at %s is not a file" % (path, repo, ref))
        if data.get("encoding") != "base64":
            raise ForgeError("GitHub sent %s of %s without its content (over 1 MB?)" % (path, repo))
        return {"content": base64.b64decode(data.get("content") or ""), "sha": data.get("sha")}

    def put_file(self, repo, path, content, message, branch, blob_sha=None):
        """Commit ``content`` (bytes) as ``path`` on ``branch``; ``blob_sha`` is the SHA of the file
        it replaces (None: the file is new). Returns the new commit's SHA."""
        body = {"message": message, "content": base64.b64encode(content).decode("ascii"), "branch": branch}
        if blob_sha:
            body["sha"] = blob_sha
        reply = self._request("PUT", self._url("/repos/%s/contents/%s" % (_check_repo(repo), quote(path.lstrip("/")))),
                              body=body)
        return reply.data["commit"]["sha"]

    def pulls_from(self, repo, branch, state="open"):
        """The pull requests of ``repo`` whose head is ``branch`` of ``repo`` itself, as pull dicts."""
        owner = _check_repo(repo).split("/")[0]
        pages = self._get_pages("/repos/%s/pulls" % repo, {"state": state, "head": "%s:%s" % (owner, branch)})
        return [wire.pull_dict(data) for page in pages for data in page if isinstance(data, dict)]

    def create_pull(self, repo, branch, base, title, body=None):
        """Open a pull request of ``branch`` into ``base``; returns its pull dict."""
        reply = self._request("POST", self._url("/repos/%s/pulls" % _check_repo(repo)),
                              body={"title": title, "head": branch, "base": base, "body": body})
        return wire.pull_dict(reply.data)

    def update_pull(self, repo, number, **fields):
        """Change ``title``, ``body``, ``state`` or ``base`` of a pull request; returns its pull dict."""
        unknown = set(fields) - {"title", "body", "state", "base"}
        if unknown:
            raise ForgeError("update_pull: unknown fields %s" % ", ".join(sorted(unknown)))
        reply = self._request("PATCH", self._url("/repos/%s/pulls/%d" % (_check_repo(repo), int(number))),
                              body=fields)
        return wire.pull_dict(reply.data)

    def combined_status(self, repo, sha):
        """``{"state", "statuses": {context: status}}``: GitHub's combined state and the newest
        status of each context. GitHub's combined status names no creator: ``creator`` is None
        unless the server sends one."""
        pages = self._get_pages("/repos/%s/commits/%s/status" % (_check_repo(repo), quote(sha, safe="")),
                                items="statuses")
        statuses = {}
        for page in pages:
            for data in page["statuses"]:
                if isinstance(data, dict) and data.get("context") not in statuses:
                    statuses[data.get("context")] = wire.status_dict(data)
        return {"state": pages[0].get("state"), "statuses": statuses}

    def create_status(self, repo, sha, state, context, description=None, target_url=None):
        """Post a commit status; GitHub validates it (a 422 is a :class:`ForgeError` quoting it)."""
        body = {"state": state, "context": context}
        if description is not None:
            body["description"] = description
        if target_url is not None:
            body["target_url"] = target_url
        reply = self._request("POST", self._url("/repos/%s/statuses/%s" % (_check_repo(repo), quote(sha, safe=""))),
                              body=body)
        return wire.status_dict(reply.data)

    def comments(self, repo, number, since=None):
        """The issue comments of pull request ``number`` (updated at or after ``since``, a datetime
        or ISO text, when given), oldest first."""
        if isinstance(since, datetime.datetime):
            if since.tzinfo is not None:
                since = since.astimezone(datetime.timezone.utc)
            since = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        pages = self._get_pages("/repos/%s/issues/%d/comments" % (_check_repo(repo), int(number)), {"since": since})
        return [wire.comment_dict(data) for page in pages for data in page if isinstance(data, dict)]

    def permission(self, repo, user):
        """``user``'s role on ``repo``: admin, maintain, write, triage, read or none (also for an
        unknown user)."""
        reply = self._get("/repos/%s/collaborators/%s/permission" % (_check_repo(repo), quote(user, safe="")),
                          ok=(404,))
        if reply.status == 404 or not isinstance(reply.data, dict):
            return "none"
        role = reply.data.get("role_name")
        if role in ROLES:
            return role
        permission = reply.data.get("permission")
        return permission if permission in ROLES else "none"

    def is_org_member(self, org, user):
        """Whether ``user`` is a member of ``org`` (remembered for the life of this client: the
        answer has no ETag, so asking again would cost a request each time)."""
        key = (org, user)
        if key not in self._org_members:
            reply = self._get("/orgs/%s/members/%s" % (quote(org, safe=""), quote(user, safe="")), ok=(204, 302, 404))
            if reply.status == 302:
                # the credentials are not an org member: GitHub points at the public membership
                location = reply.headers.get("location") or ""
                reply = self._request("GET", location, ok=(204, 404))
            self._org_members[key] = reply.status == 204
        return self._org_members[key]

    def hooks(self, repo):
        """The webhooks of ``repo`` as hook dicts: ``{"id", "name", "active", "events", "url",
        "content_type", "insecure_ssl" (bool), "has_secret" (bool), "created_at", "updated_at"}``.
        GitHub never returns a hook's secret, only whether there is one."""
        pages = self._get_pages("/repos/%s/hooks" % _check_repo(repo))
        return [wire.hook_dict(data) for page in pages for data in page if isinstance(data, dict)]

    def _hook_body(self, url, secret, events, content_type, active, insecure_ssl):
        if content_type not in CONTENT_TYPES:
            raise ForgeError("content_type must be json or form, not %r" % (content_type,))
        config = {"url": url, "content_type": content_type, "insecure_ssl": "1" if insecure_ssl else "0"}
        if secret is not None:
            self._secrets.add(secret)
            config["secret"] = secret
        return {"active": bool(active), "events": list(events), "config": config}

    def create_hook(self, repo, url, secret, events, content_type="json", active=True, insecure_ssl=False):
        """Create a webhook delivering ``events`` to ``url``, signed with ``secret`` (None: unsigned)."""
        body = dict(self._hook_body(url, secret, events, content_type, active, insecure_ssl), name="web")
        return wire.hook_dict(self._request("POST", self._url("/repos/%s/hooks" % _check_repo(repo)), body=body).data)

    def update_hook(self, repo, hook_id, url, secret, events, content_type, active, insecure_ssl):
        """Set every setting of webhook ``hook_id``. GitHub replaces the whole config: a ``secret``
        of None removes the hook's secret."""
        body = self._hook_body(url, secret, events, content_type, active, insecure_ssl)
        path = "/repos/%s/hooks/%d" % (_check_repo(repo), int(hook_id))
        return wire.hook_dict(self._request("PATCH", self._url(path), body=body).data)

    def delete_hook(self, repo, hook_id):
        self._request("DELETE", self._url("/repos/%s/hooks/%d" % (_check_repo(repo), int(hook_id))))
