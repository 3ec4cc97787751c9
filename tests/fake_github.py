# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fake GitHub REST API on 127.0.0.1, for tests and benchmarks of everything that talks to GitHub.

It answers the REST calls the forge client (``plugins/module_utils/forge/client.py``) and PyGithub
make, with bodies shaped like GitHub's (ids, node ids, user objects, API URLs under this
server's base URL, ``head``/``base`` of pull requests, labels, ``author_association``...),
and behaves like GitHub where the client's logic depends on it:

- authentication: ``Authorization: token X`` or ``Bearer X`` with :attr:`FakeGitHub.token`,
  or an installation token got from ``POST /app/installations/{id}/access_tokens`` with an
  RS256 JWT signed by the key of an app registered with :meth:`FakeGitHub.register_app`;
  anything else is a 401 ``Bad credentials``;
- every GET answer has an ``ETag`` (a hash of its body); a request whose ``If-None-Match``
  matches gets a ``304`` without a body (and, as GitHub may, without a ``Link`` header);
- ``X-RateLimit-Limit/Remaining/Reset/Used`` on every answer; the budget is spent by every
  answer that is not a 304 (``GET /rate_limit`` is free), and once it is spent, requests get
  GitHub's 403 "API rate limit exceeded" until the window resets;
- lists are paginated (``per_page`` default 30, at most 100; ``page``) with a ``Link`` header
  of absolute URLs under the base URL;
- commit statuses: 422 with GitHub's error shape for a bad state, a description over 140
  characters, an unknown SHA, and the 1001st status of one SHA and context; the combined
  status holds the newest status of each context;
- hooks: the secret is stored but never returned (``config.secret`` is ``"********"``); a
  ``PATCH`` with a ``config`` replaces the whole config, so a config without ``secret``
  removes the secret, as on GitHub;
- files and branches: commits made with :meth:`FakeGitHub.add_commit` or ``PUT .../contents/...``
  hold files; the contents API reads and writes them (base64, git blob SHAs, 409 on a stale
  ``sha``, 422 when it is missing), ``git/refs`` creates and moves branches (a move that is not
  a fast-forward needs ``force``), and a commit to a branch moves the head of the open pull
  requests of that branch, as on GitHub; pull requests are opened and edited through the API
  (422 when one is already open for the branch or the branch has no new commits);
- unknown things are a 404 with GitHub's body.

Every request is recorded (:attr:`FakeGitHub.requests`, with the credential masked) and
:meth:`FakeGitHub.inject` makes the next matching requests fail (a 403 secondary rate limit
with ``Retry-After``, a 502, a 404...). State is set up and read back with plain methods
(:meth:`add_repo`, :meth:`add_pull`, :meth:`statuses`...); ids are deterministic (counters in
the order things are made), times come from ``clock`` (``time.time`` by default).

Run it alone with ``python tests/fake_github.py --port 8081 --repo owner/name``: it prints its
URL and token as one JSON line and serves until interrupted.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import http.server
import itertools
import json
import re
import secrets
import socket
import threading
import time
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

DOCS_URL = "https://docs.github.com/rest"
PERMISSIONS = ("admin", "maintain", "write", "triage", "read", "none")
# The legacy "permission" field of the collaborator-permission answer, by role.
LEGACY_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read",
                     "read": "read", "none": "none"}
STATUS_STATES = ("pending", "success", "failure", "error")
MAX_DESCRIPTION = 140
MAX_STATUSES = 1000              # per SHA and context
DEFAULT_RATE_LIMIT = 5000
RATE_WINDOW = 3600
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
INSTALLATION_TOKEN_LIFETIME = 3600
MAX_JWT_LIFETIME = 600           # GitHub refuses an app JWT that expires more than 10 min ahead
CLOCK_SKEW = 60
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
HEX_REF_RE = re.compile(r"^[0-9a-f]{4,40}$")
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID FAKE.")
DEFAULT_BODIES = {
    304: None,
    400: {"message": "Problems parsing JSON"},
    401: {"message": "Bad credentials"},
    403: {"message": SECONDARY_LIMIT_MESSAGE,
          "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
                               "#about-secondary-rate-limits"},
    404: {"message": "Not Found"},
    409: {"message": "Conflict"},
    422: {"message": "Validation Failed"},
    429: {"message": SECONDARY_LIMIT_MESSAGE},
    500: {"message": "Server Error"},
    502: {"message": "Server Error"},
    503: {"message": "Service Unavailable"},
    504: {"message": "We couldn't respond to your request in time. Sorry about that. "
                     "Please try resubmitting your request and contact us if the problem persists."},
}


class _Answer(Exception):
    """Raised inside a handler to answer at once (errors); ``payload`` is the JSON body."""

    def __init__(self, status, payload=None, headers=None):
        super().__init__("%s %s" % (status, (payload or {}).get("message", "")))
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})


def _error(status, message, errors=None):
    body = {"message": message}
    if errors is not None:
        body["errors"] = errors
    body.update({"documentation_url": DOCS_URL, "status": str(status)})
    return _Answer(status, body)


def _validation_failed(resource, message, field=None):
    error = {"resource": resource, "code": "custom", "message": message}
    if field:
        error["field"] = field
    return _error(422, "Validation Failed", [error])


def _not_found():
    return _error(404, "Not Found")


def _node_id(kind, number):
    return base64.b64encode(("0%d:%s%d" % (len(kind), kind, number)).encode()).decode()


def _b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _first(query, name, default=None):
    values = query.get(name)
    return values[-1] if values else default


class FakeGitHub:
    """The fake server and its state; a context manager that starts and stops it.

    ``token``: the token it accepts (random by default); ``login``: the user that token
    belongs to (the creator of what it posts); ``clock``: epoch seconds for timestamps and the
    rate-limit window; ``rate_limit``: requests per hour.
    """

    def __init__(self, host="127.0.0.1", port=0, token=None, login="testfleet-bot", clock=time.time,
                 rate_limit=DEFAULT_RATE_LIMIT):
        self.host = host
        self.port = port
        self.token = token or "ghp_fake" + secrets.token_hex(16)
        self.login = login
        self._clock = clock
        self._lock = threading.RLock()
        self._server = None
        self._thread = None
        self._connections = set()
        self._ids = {}
        self._user_ids = {}
        self._repo_ids = {}
        self._label_ids = {}
        self._repos = {}
        self._orgs = {}
        self._apps = {}
        self._installation_tokens = {}
        self._injections = []
        self._requests = []
        self._counted = 0
        self._limit = rate_limit
        self._used = 0
        self._reset = None
        self._request_number = itertools.count(1)
        self._routes = [
            ("GET", r"/rate_limit", self._get_rate_limit),
            ("POST", r"/app/installations/([0-9]+)/access_tokens", self._post_access_token),
            ("GET", r"/orgs/([^/]+)/members/([^/]+)", self._get_org_member),
            ("GET", r"/repos/([^/]+/[^/]+)", self._get_repo),
            ("GET", r"/repos/([^/]+/[^/]+)/pulls", self._get_pulls),
            ("GET", r"/repos/([^/]+/[^/]+)/pulls/([0-9]+)", self._get_pull),
            ("GET", r"/repos/([^/]+/[^/]+)/branches", self._get_branches),
            ("GET", r"/repos/([^/]+/[^/]+)/branches/(.+)", self._get_branch),
            ("POST", r"/repos/([^/]+/[^/]+)/pulls", self._post_pull),
            ("PATCH", r"/repos/([^/]+/[^/]+)/pulls/([0-9]+)", self._patch_pull),
            ("GET", r"/repos/([^/]+/[^/]+)/contents/(.+)", self._get_contents),
            ("PUT", r"/repos/([^/]+/[^/]+)/contents/(.+)", self._put_contents),
            ("GET", r"/repos/([^/]+/[^/]+)/git/ref/heads/(.+)", self._get_git_ref),
            ("POST", r"/repos/([^/]+/[^/]+)/git/refs", self._post_git_ref),
            ("PATCH", r"/repos/([^/]+/[^/]+)/git/refs/heads/(.+)", self._patch_git_ref),
            ("GET", r"/repos/([^/]+/[^/]+)/commits/(.+)/status", self._get_combined_status),
            ("GET", r"/repos/([^/]+/[^/]+)/commits/(.+)/statuses", self._get_statuses),
            ("POST", r"/repos/([^/]+/[^/]+)/statuses/([^/]+)", self._post_status),
            ("GET", r"/repos/([^/]+/[^/]+)/issues/([0-9]+)/comments", self._get_comments),
            ("POST", r"/repos/([^/]+/[^/]+)/issues/([0-9]+)/comments", self._post_comment),
            ("GET", r"/repos/([^/]+/[^/]+)/collaborators/([^/]+)/permission", self._get_permission),
            ("GET", r"/repos/([^/]+/[^/]+)/hooks", self._get_hooks),
            ("POST", r"/repos/([^/]+/[^/]+)/hooks", self._post_hook),
            ("GET", r"/repos/([^/]+/[^/]+)/hooks/([0-9]+)", self._get_hook),
            ("PATCH", r"/repos/([^/]+/[^/]+)/hooks/([0-9]+)", self._patch_hook),
            ("DELETE", r"/repos/([^/]+/[^/]+)/hooks/([0-9]+)", self._delete_hook),
        ]
        self._routes = [(method, re.compile(pattern + "$"), handler) for method, pattern, handler in self._routes]

    # ------------------------------------------------------------------ server life
    def start(self):
        """Start serving in a background thread; :attr:`url` is then the API base URL."""
        fake = self

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-github", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop serving and close the open connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def url(self):
        """The API base URL, e.g. ``http://127.0.0.1:PORT``."""
        return "http://%s:%d" % (self.host, self.port)

    # ------------------------------------------------------------------ state: set up
    def _next_id(self, kind, start):
        with self._lock:
            counter = self._ids.setdefault(kind, itertools.count(start))
            return next(counter)

    def _now(self):
        return self._clock()

    def _iso(self, moment=None):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._now() if moment is None else moment))

    def _repo(self, repo):
        try:
            return self._repos[repo]
        except KeyError:
            raise _not_found()

    def add_repo(self, repo, default_branch="main", private=False):
        """Create ``owner/name`` (a no-op when it exists); returns its API body."""
        with self._lock:
            if repo not in self._repos:
                now = self._iso()
                self._repos[repo] = {
                    "full_name": repo, "default_branch": default_branch, "private": private,
                    "created_at": now, "branches": {}, "pulls": {}, "statuses": {}, "comments": {},
                    "hooks": {}, "permissions": {}, "commits": {}}
            return self._repo_body(repo)

    def set_branch(self, repo, branch, sha):
        """Point ``branch`` of ``repo`` at ``sha`` (creating it)."""
        with self._lock:
            self._repo(repo)["branches"][branch] = sha

    def add_commit(self, repo, files, branch=None, parent=None, message="Change files", author=None):
        """Make a commit of ``repo`` whose files are those of ``parent`` (default: the head of
        ``branch``, if it exists) changed by ``files`` (path -> text or bytes; None removes the
        path); with ``branch``, point the branch at it. Returns the commit's SHA."""
        with self._lock:
            return self._commit(repo, files, branch, parent, message, author or self.login)

    def file_at(self, repo, ref, path):
        """The bytes of ``path`` at ``ref`` (a branch or commit SHA), or None."""
        with self._lock:
            data = self._repo(repo)
            sha = data["branches"].get(ref, ref)
            return data["commits"].get(sha, {}).get("files", {}).get(path)

    def pulls(self, repo):
        """Every pull request of ``repo`` as an API body, newest first."""
        with self._lock:
            data = self._repo(repo)
            return [self._pull_body(repo, p, full=True) for n, p in sorted(data["pulls"].items(), reverse=True)]

    def add_pull(self, repo, number, head_sha, base="main", author="alice", author_association="MEMBER",
                 draft=False, labels=(), state="open", head_ref=None, head_repo=None, title=None):
        """Open (or, with ``state``, close) pull request ``number``; returns its API body.

        ``head_repo`` is the ``owner/name`` the head branch lives in (a fork), by default
        ``repo`` itself.
        """
        with self._lock:
            data = self._repo(repo)
            if number in data["pulls"]:
                raise ValueError("pull request %s#%d exists" % (repo, number))
            now = self._iso()
            data["pulls"][number] = {
                "number": number, "id": self._next_id("pull", 1000001), "title": title or "Change %d" % number,
                "body": None, "state": "open", "draft": bool(draft), "locked": False,
                "created_at": now, "updated_at": now, "closed_at": None, "merged_at": None,
                "head_sha": head_sha, "head_ref": head_ref or "change-%d" % number,
                "head_repo": head_repo or repo, "base": base, "author": author,
                "author_association": author_association, "labels": list(labels), "merged": False}
            data["comments"].setdefault(number, [])
            self._user(author)
            if state != "open":
                self._change_pull(repo, data["pulls"][number], {"state": state})
            return self._pull_body(repo, data["pulls"][number], full=True)

    def update_pull(self, repo, number, **changes):
        """Change a pull request: ``head_sha``, ``state`` (open, closed; merged is closed with
        ``merged=True``), ``merged`` (True closes it as merged), ``draft``, ``labels``, ``title``, ``head_ref``, ``head_repo``,
        ``base``, ``author_association``. Bumps ``updated_at``; returns the new body."""
        with self._lock:
            data = self._repo(repo)
            if number not in data["pulls"]:
                raise KeyError("no pull request %s#%d" % (repo, number))
            pull = data["pulls"][number]
            self._change_pull(repo, pull, changes)
            return self._pull_body(repo, pull, full=True)

    def _change_pull(self, repo, pull, changes):
        known = ("head_sha", "state", "merged", "draft", "labels", "title", "head_ref", "head_repo", "base",
                 "author_association")
        unknown = set(changes) - set(known)
        if unknown:
            raise TypeError("update_pull: unknown fields %s" % ", ".join(sorted(unknown)))
        now = self._iso()
        if changes.get("state") == "merged":
            changes = dict(changes, state="closed", merged=True)
        if changes.get("merged"):
            changes = dict(changes, state="closed")
            pull["merged"] = True
            pull["merged_at"] = now
        if "state" in changes:
            if changes["state"] not in ("open", "closed"):
                raise ValueError("state must be open or closed")
            if changes["state"] == "closed" and pull["state"] == "open":
                pull["closed_at"] = now
            elif changes["state"] == "open":
                pull["closed_at"] = pull["merged_at"] = None
                pull["merged"] = False
        for name in ("head_sha", "state", "draft", "title", "head_ref", "head_repo", "base",
                     "author_association"):
            if name in changes:
                pull[name] = changes[name]
        if "labels" in changes:
            pull["labels"] = list(changes["labels"])
        pull["updated_at"] = now

    def add_comment(self, repo, number, body, user, author_association=None):
        """Add an issue comment by ``user`` to pull request (or issue) ``number``; returns its body."""
        with self._lock:
            return self._comment_body(repo, self._store_comment(repo, number, body, user, author_association))

    def _store_comment(self, repo, number, body, user, author_association=None):
        data = self._repo(repo)
        if number not in data["comments"]:
            raise _not_found()
        now = self._iso()
        comment = {"id": self._next_id("comment", 5000001), "number": number, "body": body, "user": user,
                   "created_at": now, "updated_at": now,
                   "author_association": author_association or self._association(repo, user)}
        self._user(user)
        data["comments"][number].append(comment)
        return comment

    def comments(self, repo, number):
        """The comments of ``number`` as their API bodies, oldest first."""
        with self._lock:
            return [self._comment_body(repo, c) for c in self._repo(repo)["comments"].get(number, [])]

    def set_permission(self, repo, user, permission):
        """``user``'s role on ``repo``: admin, maintain, write, triage, read or none."""
        if permission not in PERMISSIONS:
            raise ValueError("permission must be one of %s" % ", ".join(PERMISSIONS))
        with self._lock:
            self._repo(repo)["permissions"][user] = permission
            self._user(user)

    def add_org_member(self, org, user):
        """Make ``user`` a member of ``org`` (creating the organisation)."""
        with self._lock:
            self._orgs.setdefault(org, set()).add(user)
            self._user(user)

    def post_status(self, repo, sha, state, context, description=None, target_url=None, creator=None):
        """Add a commit status server-side (as ``creator``, by default :attr:`login`), without
        GitHub's per-context cap (to fill a context up); returns its API body."""
        with self._lock:
            return self._status_body(repo, self._store_status(repo, sha, {
                "state": state, "context": context, "description": description, "target_url": target_url},
                creator or self.login, cap=False))

    def statuses(self, repo, sha, context=None):
        """The statuses posted on ``sha`` (of ``context``, when given), oldest first."""
        with self._lock:
            return [self._status_body(repo, s) for s in self._repo(repo)["statuses"].get(sha, [])
                    if context is None or s["context"] == context]

    def add_hook(self, repo, url, secret=None, events=("push",), content_type="json", active=True,
                 insecure_ssl=False):
        """Create a webhook server-side; returns its API body."""
        with self._lock:
            config = {"url": url, "content_type": content_type, "insecure_ssl": "1" if insecure_ssl else "0"}
            if secret is not None:
                config["secret"] = secret
            hook = self._store_hook(repo, {"active": active, "events": list(events), "config": config})
            return self._hook_body(repo, hook)

    def hooks(self, repo):
        """The webhooks of ``repo`` as stored: like their API bodies, but ``config.secret`` is the
        real secret (or absent)."""
        with self._lock:
            result = []
            for hook in self._repo(repo)["hooks"].values():
                body = self._hook_body(repo, hook)
                body["config"] = copy.deepcopy(hook["config"])
                result.append(body)
            return result

    def register_app(self, app_id, public_key, installation_ids=(1,), slug="testfleet-app"):
        """Register a GitHub App: ``public_key`` (PEM text or bytes) verifies its JWTs;
        ``installation_ids`` are the installations it may get tokens for."""
        if isinstance(public_key, str):
            public_key = public_key.encode()
        key = serialization.load_pem_public_key(public_key)
        with self._lock:
            self._apps[str(app_id)] = {"key": key, "installations": set(installation_ids), "slug": slug}

    def installation_tokens(self):
        """The installation tokens handed out so far (for tests that check they are used)."""
        with self._lock:
            return list(self._installation_tokens)

    # ------------------------------------------------------------------ rate limit, faults, records
    def inject(self, method, path_pattern, status, times=1, headers=None, body=None):
        """Answer the next ``times`` requests whose method is ``method`` (``"*"``: any) and whose
        path matches the regex ``path_pattern`` (``re.search``; anchor it for an exact match)
        with ``status``, ``headers`` and ``body`` (JSON; by default GitHub's body for that
        status). ``times=None``: every matching request until :meth:`clear_injections`."""
        with self._lock:
            self._injections.append({"method": method.upper(), "pattern": re.compile(path_pattern),
                                     "status": status, "times": times, "headers": dict(headers or {}),
                                     "body": DEFAULT_BODIES.get(status, {"message": "Error"}) if body is None else body})

    def clear_injections(self):
        with self._lock:
            self._injections = []

    def set_rate_limit(self, remaining=None, reset=None, limit=None):
        """Set the rate-limit window: requests ``remaining``, ``reset`` (epoch seconds), ``limit``."""
        with self._lock:
            self._roll_window()
            if limit is not None:
                self._limit = limit
            if remaining is not None:
                self._used = self._limit - remaining
            if reset is not None:
                self._reset = reset

    @property
    def rate_limit(self):
        """``{"limit", "remaining", "reset", "used"}`` of the current window."""
        with self._lock:
            self._roll_window()
            return self._rate()

    @property
    def requests(self):
        """Every request answered: ``{"method", "path", "query", "status", "counted", "headers"}``
        (``Authorization`` masked as ``<scheme> ********``), oldest first."""
        with self._lock:
            return copy.deepcopy(self._requests)

    @property
    def counted(self):
        """How many answers cost rate limit: every answer but 304s and ``GET /rate_limit``."""
        with self._lock:
            return self._counted

    def reset_records(self):
        """Forget the recorded requests and the count (not the rate-limit window)."""
        with self._lock:
            self._requests = []
            self._counted = 0

    def _roll_window(self):
        now = self._now()
        if self._reset is None or now >= self._reset:
            self._reset = int(now) + RATE_WINDOW
            self._used = 0

    def _rate(self):
        return {"limit": self._limit, "remaining": max(self._limit - self._used, 0), "reset": self._reset,
                "used": self._used}

    # ------------------------------------------------------------------ request handling
    def _handle(self, method, target, headers, raw_body):
        """Answer one request: ``(status, [(header, value)], body bytes)``."""
        parts = urlsplit(target)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        with self._lock:
            self._roll_window()
            auth = None
            try:
                auth = self._authenticate(method, path, headers.get("Authorization"))
                self._injected(method, path)
                free = method == "GET" and path == "/rate_limit"
                if not free and self._used >= self._limit:
                    raise _error(403, "API rate limit exceeded for user ID 1. If you reach out to GitHub "
                                      "Support for help, please include the request ID FAKE.")
                status, payload, extra = self._route(method, path, query, raw_body, auth)
            except _Answer as answer:
                status, payload, extra = answer.status, answer.payload, answer.headers
            return self._respond(method, path, query, headers, status, payload, extra)

    def _respond(self, method, path, query, headers, status, payload, extra):
        body = b"" if payload is None else json.dumps(payload).encode()
        out = {"Content-Type": "application/json; charset=utf-8",
               "X-GitHub-Media-Type": "github.v3; format=json",
               "X-GitHub-Api-Version-Selected": "2022-11-28",
               "X-GitHub-Request-Id": "FAKE:%d" % next(self._request_number),
               "Vary": "Accept, Authorization, Cookie, X-GitHub-OTP"}
        if method == "GET" and status == 200:
            etag = 'W/"%s"' % hashlib.sha256(body).hexdigest()
            out["ETag"] = etag
            out["Cache-Control"] = "private, max-age=60, s-maxage=60"
            if self._etag_matches(headers.get("If-None-Match"), etag):
                status, body = 304, b""
                extra = {}
        out.update(extra)
        free = method == "GET" and path == "/rate_limit"
        counted = status != 304 and not free
        if counted:
            self._counted += 1
            self._used = min(self._used + 1, self._limit)
        rate = self._rate()
        out.update({"X-RateLimit-Limit": str(rate["limit"]), "X-RateLimit-Remaining": str(rate["remaining"]),
                    "X-RateLimit-Reset": str(rate["reset"]), "X-RateLimit-Used": str(rate["used"]),
                    "X-RateLimit-Resource": "core"})
        recorded = {}
        for name, value in headers.items():
            if name.lower() == "authorization":
                value = value.split(" ", 1)[0] + " ********"
            recorded[name] = value
        self._requests.append({"method": method, "path": path,
                               "query": {name: values[-1] for name, values in query.items()},
                               "status": status, "counted": counted, "headers": recorded})
        return status, list(out.items()), body

    @staticmethod
    def _etag_matches(header, etag):
        if not header:
            return False
        bare = etag[2:] if etag.startswith("W/") else etag
        for candidate in header.split(","):
            candidate = candidate.strip()
            if candidate == "*" or (candidate[2:] if candidate.startswith("W/") else candidate) == bare:
                return True
        return False

    def _authenticate(self, method, path, header):
        """The caller: ("user", login), ("installation", id, login) or ("jwt", raw) for app routes."""
        scheme, credential = ((header or "").split(" ", 1) + [""])[:2]
        credential = credential.strip()
        if scheme.lower() not in ("token", "bearer") or not credential:
            if method == "GET" and path == "/rate_limit":
                return None
            raise _error(401, "Requires authentication")
        if path.startswith("/app/"):
            if scheme.lower() != "bearer":
                raise _error(401, "A JSON web token could not be decoded")
            return ("jwt", credential)
        if secrets.compare_digest(credential, self.token):
            return ("user", self.login)
        grant = self._installation_tokens.get(credential)
        if grant is not None and grant["expires"] > self._now():
            return ("installation", grant["installation"], grant["login"])
        raise _error(401, "Bad credentials")

    def _injected(self, method, path):
        for injection in self._injections:
            if injection["method"] not in ("*", method) or not injection["pattern"].search(path):
                continue
            if injection["times"] is not None:
                injection["times"] -= 1
                if injection["times"] <= 0:
                    self._injections.remove(injection)
            raise _Answer(injection["status"], copy.deepcopy(injection["body"]), injection["headers"])

    def _route(self, method, path, query, raw_body, auth):
        self._path = path
        for route_method, pattern, handler in self._routes:
            match = pattern.match(path)
            if match and route_method == method:
                body = None
                if method in ("POST", "PATCH", "PUT"):
                    try:
                        body = json.loads(raw_body or b"{}")
                    except ValueError:
                        raise _error(400, "Problems parsing JSON")
                    if not isinstance(body, dict):
                        raise _error(400, "Problems parsing JSON")
                result = handler(*[unquote(g) for g in match.groups()], query=query, body=body, auth=auth)
                status, payload = result[0], result[1]
                return status, payload, result[2] if len(result) > 2 else {}
        raise _not_found()

    def _paginate(self, query, items):
        """``(page of items, {"Link": ...})`` for ``per_page``/``page`` in ``query``; the links
        point at the path being answered."""
        path = self._path
        try:
            per_page = min(max(int(_first(query, "per_page", DEFAULT_PER_PAGE)), 1), MAX_PER_PAGE)
        except ValueError:
            per_page = DEFAULT_PER_PAGE
        try:
            page = max(int(_first(query, "page", 1)), 1)
        except ValueError:
            page = 1
        last = max((len(items) + per_page - 1) // per_page, 1)
        chunk = items[(page - 1) * per_page:page * per_page]

        def link(number):
            params = [(k, v) for k, values in query.items() for v in values if k != "page"]
            params.append(("page", str(number)))
            return "<%s%s?%s>" % (self.url, path, urlencode(params))

        links = []
        if page < last:
            links += ['%s; rel="next"' % link(page + 1), '%s; rel="last"' % link(last)]
        if page > 1:
            links += ['%s; rel="first"' % link(1), '%s; rel="prev"' % link(min(page - 1, last))]
        return chunk, ({"Link": ", ".join(links)} if links else {})

    def _caller_login(self, auth):
        return auth[-1] if auth else self.login

    # ------------------------------------------------------------------ bodies
    def _user(self, login):
        if login not in self._user_ids:
            self._user_ids[login] = self._next_id("user", 101)
        number = self._user_ids[login]
        api = "%s/users/%s" % (self.url, quote(login))
        kind = "Bot" if login.endswith("[bot]") else ("Organization" if login in self._orgs else "User")
        return {"login": login, "id": number, "node_id": _node_id(kind, number),
                "avatar_url": "https://avatars.githubusercontent.com/u/%d?v=4" % number, "gravatar_id": "",
                "url": api, "html_url": "https://github.com/%s" % login,
                "followers_url": api + "/followers", "following_url": api + "/following{/other_user}",
                "gists_url": api + "/gists{/gist_id}", "starred_url": api + "/starred{/owner}{/repo}",
                "subscriptions_url": api + "/subscriptions", "organizations_url": api + "/orgs",
                "repos_url": api + "/repos", "events_url": api + "/events{/privacy}",
                "received_events_url": api + "/received_events", "type": kind, "site_admin": False}

    def _repo_body(self, repo):
        if repo not in self._repo_ids:
            self._repo_ids[repo] = self._next_id("repo", 70001)
        number = self._repo_ids[repo]
        data = self._repos.get(repo, {})
        owner, name = repo.split("/", 1)
        api = "%s/repos/%s" % (self.url, repo)
        created = data.get("created_at", self._iso())
        return {
            "id": number, "node_id": _node_id("Repository", number), "name": name, "full_name": repo,
            "private": data.get("private", False), "owner": self._user(owner),
            "html_url": "https://github.com/%s" % repo, "description": None, "fork": repo not in self._repos,
            "url": api, "hooks_url": api + "/hooks", "issues_url": api + "/issues{/number}",
            "pulls_url": api + "/pulls{/number}", "branches_url": api + "/branches{/branch}",
            "commits_url": api + "/commits{/sha}", "statuses_url": api + "/statuses/{sha}",
            "collaborators_url": api + "/collaborators{/collaborator}",
            "comments_url": api + "/comments{/number}", "labels_url": api + "/labels{/name}",
            "created_at": created, "updated_at": created, "pushed_at": created,
            "default_branch": data.get("default_branch", "main"),
            "visibility": "private" if data.get("private") else "public", "archived": False,
            "disabled": False, "has_issues": True, "topics": []}

    def _label_body(self, repo, name):
        key = (repo, name)
        if key not in self._label_ids:
            self._label_ids[key] = self._next_id("label", 9001)
        number = self._label_ids[key]
        return {"id": number, "node_id": _node_id("Label", number),
                "url": "%s/repos/%s/labels/%s" % (self.url, repo, quote(name, safe="")), "name": name,
                "color": "ededed", "default": False, "description": None}

    def _pull_body(self, repo, pull, full=False):
        number = pull["number"]
        api = "%s/repos/%s" % (self.url, repo)
        html = "https://github.com/%s/pull/%d" % (repo, number)
        head_repo = pull["head_repo"]
        base_sha = self._repos[repo]["branches"].get(pull["base"], "0" * 40)
        body = {
            "url": "%s/pulls/%d" % (api, number), "id": pull["id"], "node_id": _node_id("PullRequest", pull["id"]),
            "html_url": html, "diff_url": html + ".diff", "patch_url": html + ".patch",
            "issue_url": "%s/issues/%d" % (api, number), "number": number, "state": pull["state"],
            "locked": pull["locked"], "title": pull["title"], "user": self._user(pull["author"]),
            "body": pull["body"], "created_at": pull["created_at"], "updated_at": pull["updated_at"],
            "closed_at": pull["closed_at"], "merged_at": pull["merged_at"],
            "merge_commit_sha": None, "assignee": None, "assignees": [], "requested_reviewers": [],
            "requested_teams": [], "labels": [self._label_body(repo, name) for name in pull["labels"]],
            "milestone": None, "draft": pull["draft"],
            "commits_url": "%s/pulls/%d/commits" % (api, number),
            "review_comments_url": "%s/pulls/%d/comments" % (api, number),
            "review_comment_url": api + "/pulls/comments{/number}",
            "comments_url": "%s/issues/%d/comments" % (api, number),
            "statuses_url": "%s/statuses/%s" % (api, pull["head_sha"]),
            "head": {"label": "%s:%s" % (head_repo.split("/")[0], pull["head_ref"]), "ref": pull["head_ref"],
                     "sha": pull["head_sha"], "user": self._user(head_repo.split("/")[0]),
                     "repo": self._repo_body(head_repo)},
            "base": {"label": "%s:%s" % (repo.split("/")[0], pull["base"]), "ref": pull["base"], "sha": base_sha,
                     "user": self._user(repo.split("/")[0]), "repo": self._repo_body(repo)},
            "_links": {"self": {"href": "%s/pulls/%d" % (api, number)}, "html": {"href": html},
                       "issue": {"href": "%s/issues/%d" % (api, number)},
                       "comments": {"href": "%s/issues/%d/comments" % (api, number)},
                       "review_comments": {"href": "%s/pulls/%d/comments" % (api, number)},
                       "review_comment": {"href": api + "/pulls/comments{/number}"},
                       "commits": {"href": "%s/pulls/%d/commits" % (api, number)},
                       "statuses": {"href": "%s/statuses/%s" % (api, pull["head_sha"])}},
            "author_association": pull["author_association"], "auto_merge": None, "active_lock_reason": None}
        if full:
            body.update({"merged": pull["merged"], "mergeable": None if pull["merged"] else True,
                         "rebaseable": None if pull["merged"] else True,
                         "mergeable_state": "unknown" if pull["merged"] else "clean", "merged_by": None,
                         "comments": len(self._repos[repo]["comments"].get(number, [])), "review_comments": 0,
                         "maintainer_can_modify": False, "commits": 1, "additions": 1, "deletions": 1,
                         "changed_files": 1})
        return body

    def _status_body(self, repo, status, with_creator=True):
        body = {"url": "%s/repos/%s/statuses/%s" % (self.url, repo, status["sha"]),
                "avatar_url": self._user(status["creator"])["avatar_url"], "id": status["id"],
                "node_id": _node_id("StatusContext", status["id"]), "state": status["state"],
                "description": status["description"], "target_url": status["target_url"],
                "context": status["context"], "created_at": status["created_at"],
                "updated_at": status["updated_at"]}
        if with_creator:
            body["creator"] = self._user(status["creator"])
        return body

    def _comment_body(self, repo, comment):
        api = "%s/repos/%s/issues/comments/%d" % (self.url, repo, comment["id"])
        html = "https://github.com/%s/pull/%d#issuecomment-%d" % (repo, comment["number"], comment["id"])
        return {"url": api, "html_url": html,
                "issue_url": "%s/repos/%s/issues/%d" % (self.url, repo, comment["number"]),
                "id": comment["id"], "node_id": _node_id("IssueComment", comment["id"]),
                "user": self._user(comment["user"]), "created_at": comment["created_at"],
                "updated_at": comment["updated_at"], "author_association": comment["author_association"],
                "body": comment["body"], "performed_via_github_app": None,
                "reactions": {"url": api + "/reactions", "total_count": 0, "+1": 0, "-1": 0, "laugh": 0,
                              "hooray": 0, "confused": 0, "heart": 0, "rocket": 0, "eyes": 0}}

    def _hook_body(self, repo, hook):
        api = "%s/repos/%s/hooks/%d" % (self.url, repo, hook["id"])
        config = {k: v for k, v in hook["config"].items() if k != "secret"}
        if hook["config"].get("secret"):
            config["secret"] = "********"
        return {"type": "Repository", "id": hook["id"], "name": "web", "active": hook["active"],
                "events": list(hook["events"]), "config": config, "updated_at": hook["updated_at"],
                "created_at": hook["created_at"], "url": api, "test_url": api + "/test",
                "ping_url": api + "/pings", "deliveries_url": api + "/deliveries",
                "last_response": {"code": None, "status": "unused", "message": None}}

    def _association(self, repo, user):
        owner = repo.split("/")[0]
        if user == owner:
            return "OWNER"
        if user in self._orgs.get(owner, ()):
            return "MEMBER"
        if self._repos[repo]["permissions"].get(user, "none") not in ("none", "read"):
            return "COLLABORATOR"
        return "NONE"

    # ------------------------------------------------------------------ statuses, hooks: storage
    def _resolve_ref(self, repo, ref):
        data = self._repo(repo)
        if ref in data["branches"]:
            return data["branches"][ref]
        if HEX_REF_RE.match(ref):
            if len(ref) == 40:
                return ref
            for sha in data["statuses"]:
                if sha.startswith(ref):
                    return sha
            return ref
        raise _error(404, "No commit found for SHA: %s" % ref)

    def _commit(self, repo, files, branch, parent, message, author):
        data = self._repo(repo)
        if parent is None and branch is not None:
            parent = data["branches"].get(branch)
        tree = dict(data["commits"].get(parent, {}).get("files", {})) if parent else {}
        for path, content in (files or {}).items():
            if content is None:
                tree.pop(path, None)
            else:
                tree[path] = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        digest = hashlib.sha1(json.dumps([parent, message, author, self._now(), sorted(
            (path, hashlib.sha1(blob).hexdigest()) for path, blob in tree.items())]).encode("utf-8"))
        digest.update(str(len(data["commits"])).encode("ascii"))
        sha = digest.hexdigest()
        data["commits"][sha] = {"files": tree, "parents": [parent] if parent else [], "message": message,
                                "author": author}
        if branch is not None:
            self._move_branch(repo, branch, sha)
        return sha

    def _move_branch(self, repo, branch, sha):
        data = self._repo(repo)
        data["branches"][branch] = sha
        for pull in data["pulls"].values():
            if pull["state"] == "open" and pull["head_ref"] == branch and pull["head_repo"] == repo:
                pull["head_sha"] = sha
                pull["updated_at"] = self._iso()

    def _is_ancestor(self, repo, ancestor, sha):
        commits = self._repo(repo)["commits"]
        todo, seen = [sha], set()
        while todo:
            current = todo.pop()
            if current == ancestor:
                return True
            if current in seen:
                continue
            seen.add(current)
            todo.extend(commits.get(current, {}).get("parents", []))
        return False

    @staticmethod
    def _blob_sha(content):
        return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()

    def _content_body(self, repo, path, content, ref):
        api = "%s/repos/%s" % (self.url, repo)
        blob = self._blob_sha(content)
        return {"type": "file", "encoding": "base64", "size": len(content), "name": path.rsplit("/", 1)[-1],
                "path": path, "sha": blob, "content": base64.encodebytes(content).decode("ascii"),
                "url": "%s/contents/%s?ref=%s" % (api, quote(path), quote(ref, safe="")),
                "git_url": "%s/git/blobs/%s" % (api, blob),
                "html_url": "https://github.com/%s/blob/%s/%s" % (repo, ref, path),
                "download_url": "https://raw.githubusercontent.com/%s/%s/%s" % (repo, ref, path),
                "_links": {"self": "%s/contents/%s?ref=%s" % (api, quote(path), quote(ref, safe="")),
                           "git": "%s/git/blobs/%s" % (api, blob),
                           "html": "https://github.com/%s/blob/%s/%s" % (repo, ref, path)}}

    def _ref_body(self, repo, branch, sha):
        api = "%s/repos/%s" % (self.url, repo)
        return {"ref": "refs/heads/" + branch, "node_id": _node_id("Ref", int(sha[:7], 16)),
                "url": "%s/git/refs/heads/%s" % (api, quote(branch)),
                "object": {"sha": sha, "type": "commit", "url": "%s/git/commits/%s" % (api, sha)}}

    def _store_status(self, repo, sha, fields, creator, cap=True):
        data = self._repo(repo)
        if not SHA_RE.match(sha):
            raise _error(422, "No commit found for SHA: %s" % sha)
        state = fields.get("state")
        if state not in STATUS_STATES:
            raise _validation_failed("Status", "state is not included in the list", field="state")
        context = fields.get("context") or "default"
        description = fields.get("description")
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise _validation_failed("Status", "description is too long (maximum is %d characters)"
                                     % MAX_DESCRIPTION, field="description")
        existing = data["statuses"].setdefault(sha, [])
        if cap and sum(1 for s in existing if s["context"] == context) >= MAX_STATUSES:
            raise _validation_failed("Status", "This SHA and context has reached the maximum number of statuses.")
        now = self._iso()
        status = {"id": self._next_id("status", 30000001), "sha": sha, "state": state, "context": context,
                  "description": description, "target_url": fields.get("target_url"), "creator": creator,
                  "created_at": now, "updated_at": now}
        self._user(creator)
        existing.append(status)
        return status

    def _store_hook(self, repo, fields, hook=None):
        data = self._repo(repo)
        config = fields.get("config")
        if hook is None or config is not None:
            if not isinstance(config, dict) or not config.get("url"):
                raise _validation_failed("Hook", "Config must contain URL for webhooks")
            config = dict(config)
            config.setdefault("content_type", "form")
            if config["content_type"] not in ("json", "form"):
                raise _validation_failed("Hook", "Config content_type must be json or form")
            insecure = config.get("insecure_ssl", "0")
            config["insecure_ssl"] = "1" if str(insecure).lower() in ("1", "true") else "0"
            if not config.get("secret"):
                config.pop("secret", None)
            for other in data["hooks"].values():
                if other is not hook and other["config"]["url"] == config["url"]:
                    raise _validation_failed("Hook", "Hook already exists on this repository")
        events = fields.get("events")
        if events is not None and (not isinstance(events, list) or not all(isinstance(e, str) for e in events)):
            raise _validation_failed("Hook", "Events must be a list of event names")
        now = self._iso()
        if hook is None:
            hook = {"id": self._next_id("hook", 400000001), "created_at": now, "events": ["push"], "active": True}
            data["hooks"][hook["id"]] = hook
        if config is not None:
            hook["config"] = config
        if events is not None:
            hook["events"] = list(events)
        for name in fields.get("add_events") or ():
            if name not in hook["events"]:
                hook["events"].append(name)
        hook["events"] = [e for e in hook["events"] if e not in (fields.get("remove_events") or ())]
        if "active" in fields:
            hook["active"] = bool(fields["active"])
        hook["updated_at"] = now
        return hook

    def _hook(self, repo, hook_id):
        hook = self._repo(repo)["hooks"].get(int(hook_id))
        if hook is None:
            raise _not_found()
        return hook

    # ------------------------------------------------------------------ routes
    def _get_rate_limit(self, query, body, auth):
        rate = dict(self._rate(), resource="core")
        other = {"limit": 30, "remaining": 30, "reset": self._reset, "used": 0, "resource": "search"}
        return 200, {"resources": {"core": rate, "search": other}, "rate": rate}

    def _post_access_token(self, installation_id, query, body, auth):
        app = self._verify_jwt(auth[1])
        installation_id = int(installation_id)
        if installation_id not in app["installations"]:
            raise _not_found()
        token = "ghs_fake" + secrets.token_hex(16)
        expires = self._now() + INSTALLATION_TOKEN_LIFETIME
        self._installation_tokens[token] = {"installation": installation_id, "expires": expires,
                                            "login": app["slug"] + "[bot]"}
        return 201, {"token": token, "expires_at": self._iso(expires),
                     "permissions": {"metadata": "read", "contents": "read", "pull_requests": "read",
                                     "statuses": "write", "issues": "write",
                                     "repository_hooks": "write"},
                     "repository_selection": "all"}

    def _verify_jwt(self, jwt):
        """The registered app that signed ``jwt`` (RS256, fresh, at most 10 minutes long)."""
        undecodable = _error(401, "A JSON web token could not be decoded")
        parts = jwt.split(".")
        if len(parts) != 3:
            raise undecodable
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except ValueError:
            raise undecodable
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            raise undecodable
        app = self._apps.get(str(claims.get("iss")))
        if app is None:
            raise _error(401, "Integration not found")
        try:
            app["key"].verify(signature, ("%s.%s" % (parts[0], parts[1])).encode(), padding.PKCS1v15(),
                              hashes.SHA256())
        except InvalidSignature:
            raise undecodable
        issued, expires = claims.get("iat"), claims.get("exp")
        now = time.time()  # the signer (PyGithub) uses the real clock, whatever ours says
        if not isinstance(issued, int) or issued > now + CLOCK_SKEW:
            raise _error(401, "'Issued at' claim ('iat') must be an Integer representing the time that "
                              "the assertion was issued")
        if not isinstance(expires, int) or expires <= now:
            raise _error(401, "'Expiration time' claim ('exp') must be a numeric value representing the "
                              "future time at which the assertion expires")
        if expires > now + MAX_JWT_LIFETIME + CLOCK_SKEW:
            raise _error(401, "'Expiration time' claim ('exp') is too far in the future")
        return app

    def _get_org_member(self, org, user, query, body, auth):
        if org not in self._orgs:
            raise _not_found()
        if user not in self._orgs[org]:
            raise _error(404, "User does not exist or is not a member of the organization")
        return 204, None

    def _get_repo(self, repo, query, body, auth):
        self._repo(repo)
        data = self._repo_body(repo)
        data["permissions"] = {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True}
        return 200, data

    def _get_pulls(self, repo, query, body, auth):
        data = self._repo(repo)
        state = _first(query, "state", "open")
        if state not in ("open", "closed", "all"):
            raise _validation_failed("PullRequest", "state is not included in the list", field="state")
        pulls = [p for n, p in sorted(data["pulls"].items(), reverse=True)
                 if state == "all" or p["state"] == state]
        base = _first(query, "base")
        if base:
            pulls = [p for p in pulls if p["base"] == base]
        head = _first(query, "head")
        if head:
            owner, dummy, ref = head.rpartition(":")
            pulls = [p for p in pulls if p["head_ref"] == ref and (not owner or p["head_repo"].split("/")[0] == owner)]
        page, headers = self._paginate(query, pulls)
        return 200, [self._pull_body(repo, p) for p in page], headers

    def _get_pull(self, repo, number, query, body, auth):
        pull = self._repo(repo)["pulls"].get(int(number))
        if pull is None:
            raise _not_found()
        return 200, self._pull_body(repo, pull, full=True)

    def _get_branch(self, repo, branch, query, body, auth):
        data = self._repo(repo)
        if branch not in data["branches"]:
            raise _error(404, "Branch not found")
        sha = data["branches"][branch]
        api = "%s/repos/%s" % (self.url, repo)
        return 200, {"name": branch,
                     "commit": {"sha": sha, "node_id": _node_id("Commit", int(sha[:7], 16)),
                                "url": "%s/commits/%s" % (api, sha),
                                "html_url": "https://github.com/%s/commit/%s" % (repo, sha),
                                "comments_url": "%s/commits/%s/comments" % (api, sha),
                                "commit": {"message": "Commit %s" % sha[:7],
                                           "url": "%s/git/commits/%s" % (api, sha)},
                                "parents": []},
                     "_links": {"self": "%s/branches/%s" % (api, quote(branch)),
                                "html": "https://github.com/%s/tree/%s" % (repo, branch)},
                     "protected": False,
                     "protection_url": "%s/branches/%s/protection" % (api, quote(branch))}

    def _get_branches(self, repo, query, body, auth):
        data = self._repo(repo)
        api = "%s/repos/%s" % (self.url, repo)
        items = [{"name": name, "commit": {"sha": sha, "url": "%s/commits/%s" % (api, sha)}, "protected": False}
                 for name, sha in sorted(data["branches"].items())]
        page, headers = self._paginate(query, items)
        return 200, page, headers

    def _post_pull(self, repo, query, body, auth):
        data = self._repo(repo)
        missing = [name for name in ("head", "base") if not body.get(name)]
        if missing or not (body.get("title") or body.get("issue")):
            raise _validation_failed("PullRequest", "missing_field", field=(missing or ["title"])[0])
        head = str(body["head"])
        head_owner, dummy, head_ref = head.rpartition(":")
        if head_owner and head_owner != repo.split("/")[0]:
            raise _validation_failed("PullRequest", "head is invalid (forks are not modelled)", field="head")
        base = str(body["base"])
        if head_ref not in data["branches"]:
            raise _validation_failed("PullRequest", "invalid", field="head")
        if base not in data["branches"]:
            raise _validation_failed("PullRequest", "invalid", field="base")
        for pull in data["pulls"].values():
            if pull["state"] == "open" and pull["head_ref"] == head_ref and pull["head_repo"] == repo \
                    and pull["base"] == base:
                raise _error(422, "Validation Failed", [{"resource": "PullRequest", "code": "custom",
                                                         "message": "A pull request already exists for %s:%s."
                                                         % (repo.split("/")[0], head_ref)}])
        head_sha, base_sha = data["branches"][head_ref], data["branches"][base]
        if head_sha == base_sha or self._is_ancestor(repo, head_sha, base_sha):
            raise _error(422, "Validation Failed", [{"resource": "PullRequest", "code": "custom",
                                                     "message": "No commits between %s and %s" % (base, head_ref)}])
        number = max(list(data["pulls"]) + [0]) + 1
        self.add_pull(repo, number, head_sha, base=base, author=self._caller_login(auth),
                      author_association=self._association(repo, self._caller_login(auth)),
                      draft=bool(body.get("draft")), head_ref=head_ref, title=str(body["title"]))
        data["pulls"][number]["body"] = body.get("body")
        return 201, self._pull_body(repo, data["pulls"][number], full=True)

    def _patch_pull(self, repo, number, query, body, auth):
        data = self._repo(repo)
        pull = data["pulls"].get(int(number))
        if pull is None:
            raise _not_found()
        changes = {}
        for name in ("title", "base"):
            if name in body:
                changes[name] = str(body[name])
        if "state" in body:
            if body["state"] not in ("open", "closed"):
                raise _validation_failed("PullRequest", "state is not included in the list", field="state")
            changes["state"] = body["state"]
        if "base" in changes and changes["base"] not in data["branches"]:
            raise _validation_failed("PullRequest", "invalid", field="base")
        self._change_pull(repo, pull, changes)
        if "body" in body:
            pull["body"] = body["body"]
        return 200, self._pull_body(repo, pull, full=True)

    def _get_contents(self, repo, path, query, body, auth):
        data = self._repo(repo)
        ref = _first(query, "ref") or data["default_branch"]
        sha = data["branches"].get(ref, ref)
        commit = data["commits"].get(sha)
        if commit is None and ref not in data["branches"]:
            raise _error(404, "No commit found for the ref %s" % ref)
        content = (commit or {}).get("files", {}).get(path)
        if content is None:
            raise _not_found()
        return 200, self._content_body(repo, path, content, ref)

    def _put_contents(self, repo, path, query, body, auth):
        data = self._repo(repo)
        for name in ("message", "content"):
            if not isinstance(body.get(name), str):
                raise _error(422, 'Invalid request.\n\n"%s" wasn\'t supplied.' % name)
        branch = body.get("branch") or data["default_branch"]
        if branch not in data["branches"]:
            raise _error(404, "Branch %s not found" % branch)
        try:
            content = base64.b64decode(body["content"], validate=True)
        except ValueError:
            raise _error(422, "content is not valid Base64")
        current = data["commits"].get(data["branches"][branch], {}).get("files", {}).get(path)
        if current is not None and not body.get("sha"):
            raise _error(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if current is not None and body["sha"] != self._blob_sha(current):
            raise _error(409, "%s does not match %s" % (path, body["sha"]))
        sha = self._commit(repo, {path: content}, branch, None, body["message"], self._caller_login(auth))
        api = "%s/repos/%s" % (self.url, repo)
        commit = {"sha": sha, "node_id": _node_id("Commit", int(sha[:7], 16)), "url": "%s/git/commits/%s" % (api, sha),
                  "html_url": "https://github.com/%s/commit/%s" % (repo, sha), "message": body["message"],
                  "parents": [{"sha": p} for p in data["commits"][sha]["parents"]]}
        return (200 if current is not None else 201), {"content": self._content_body(repo, path, content, branch),
                                                       "commit": commit}

    def _get_git_ref(self, repo, branch, query, body, auth):
        data = self._repo(repo)
        if branch not in data["branches"]:
            raise _not_found()
        return 200, self._ref_body(repo, branch, data["branches"][branch])

    def _post_git_ref(self, repo, query, body, auth):
        data = self._repo(repo)
        ref, sha = str(body.get("ref") or ""), str(body.get("sha") or "")
        if not ref.startswith("refs/heads/") or len(ref) <= len("refs/heads/"):
            raise _error(422, "Reference name is not valid (only refs/heads/... are modelled)")
        if not SHA_RE.match(sha):
            raise _error(422, "Object does not exist")
        branch = ref[len("refs/heads/"):]
        if branch in data["branches"]:
            raise _error(422, "Reference already exists")
        self._move_branch(repo, branch, sha)
        return 201, self._ref_body(repo, branch, sha)

    def _patch_git_ref(self, repo, branch, query, body, auth):
        data = self._repo(repo)
        if branch not in data["branches"]:
            raise _error(422, "Reference does not exist")
        sha = str(body.get("sha") or "")
        if not SHA_RE.match(sha):
            raise _error(422, "Object does not exist")
        if not body.get("force") and not self._is_ancestor(repo, data["branches"][branch], sha):
            raise _error(422, "Update is not a fast forward")
        self._move_branch(repo, branch, sha)
        return 200, self._ref_body(repo, branch, sha)

    def _get_combined_status(self, repo, ref, query, body, auth):
        sha = self._resolve_ref(repo, ref)
        latest = {}
        for status in self._repos[repo]["statuses"].get(sha, []):
            latest[status["context"]] = status
        ordered = sorted(latest.values(), key=lambda s: s["id"], reverse=True)
        states = {s["state"] for s in ordered}
        if states & {"error", "failure"}:
            combined = "failure"
        elif not ordered or "pending" in states:
            combined = "pending"
        else:
            combined = "success"
        page, headers = self._paginate(query, ordered)
        api = "%s/repos/%s" % (self.url, repo)
        return 200, {"state": combined, "statuses": [self._status_body(repo, s, with_creator=False) for s in page],
                     "sha": sha, "total_count": len(ordered), "repository": self._repo_body(repo),
                     "commit_url": "%s/commits/%s" % (api, sha), "url": "%s/commits/%s/status" % (api, sha)}, headers

    def _get_statuses(self, repo, ref, query, body, auth):
        sha = self._resolve_ref(repo, ref)
        newest_first = list(reversed(self._repos[repo]["statuses"].get(sha, [])))
        page, headers = self._paginate(query, newest_first)
        return 200, [self._status_body(repo, s) for s in page], headers

    def _post_status(self, repo, sha, query, body, auth):
        status = self._store_status(repo, sha, body, self._caller_login(auth))
        return 201, self._status_body(repo, status)

    def _get_comments(self, repo, number, query, body, auth):
        data = self._repo(repo)
        if int(number) not in data["comments"]:
            raise _not_found()
        comments = data["comments"][int(number)]
        since = _first(query, "since")
        if since:
            comments = [c for c in comments if c["updated_at"] >= since.replace("+00:00", "Z")]
        page, headers = self._paginate(query, comments)
        return 200, [self._comment_body(repo, c) for c in page], headers

    def _post_comment(self, repo, number, query, body, auth):
        if not isinstance(body.get("body"), str) or not body["body"]:
            raise _validation_failed("IssueComment", "body cannot be blank", field="body")
        comment = self._store_comment(repo, int(number), body["body"], self._caller_login(auth))
        return 201, self._comment_body(repo, comment)

    def _get_permission(self, repo, user, query, body, auth):
        data = self._repo(repo)
        default = "none" if data["private"] else "read"
        role = data["permissions"].get(user, default)
        return 200, {"permission": LEGACY_PERMISSION[role], "role_name": role, "user": self._user(user)}

    def _get_hooks(self, repo, query, body, auth):
        hooks = [hook for hook_id, hook in sorted(self._repo(repo)["hooks"].items())]
        page, headers = self._paginate(query, hooks)
        return 200, [self._hook_body(repo, h) for h in page], headers

    def _post_hook(self, repo, query, body, auth):
        if body.get("name", "web") != "web":
            raise _validation_failed("Hook", "Name must be web")
        fields = {"config": body.get("config"), "events": body.get("events", ["push"]),
                  "active": body.get("active", True)}
        return 201, self._hook_body(repo, self._store_hook(repo, fields))

    def _get_hook(self, repo, hook_id, query, body, auth):
        return 200, self._hook_body(repo, self._hook(repo, hook_id))

    def _patch_hook(self, repo, hook_id, query, body, auth):
        hook = self._hook(repo, hook_id)
        return 200, self._hook_body(repo, self._store_hook(repo, body, hook=hook))

    def _delete_hook(self, repo, hook_id, query, body, auth):
        self._hook(repo, hook_id)
        del self._repos[repo]["hooks"][int(hook_id)]
        return 204, None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection is closed after this
    fake = None

    def setup(self):
        super().setup()
        # headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold every answer with a body back for ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    def finish(self):
        with self.fake._lock:
            self.fake._connections.discard(self.connection)
        super().finish()

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        status, headers, body = self.fake._handle(self.command, self.path, self.headers, raw_body)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status not in (204, 304) and body:
            self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description="Serve a fake GitHub REST API on 127.0.0.1.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", help="the token it accepts (default: a random one, printed)")
    parser.add_argument("--repo", action="append", default=[], help="owner/name to create (repeatable)")
    options = parser.parse_args(argv)
    fake = FakeGitHub(host=options.host, port=options.port, token=options.token)
    for repo in options.repo:
        fake.add_repo(repo)
    with fake:
        print(json.dumps({"url": fake.url, "token": fake.token}), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
