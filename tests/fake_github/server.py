# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fake GitHub's HTTP server and what every answer goes through.

:class:`Server` holds the state every part shares (ids, repositories, organisations, apps,
tokens), serves in a background thread, authenticates the caller, spends and reports the rate
limit, answers injected faults, records every request (credentials masked), routes a request to
the handler a part names in its ``ROUTES`` (method, path pattern, method name) and paginates
lists with GitHub's ``Link`` header.
"""

from __future__ import annotations

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
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .common import (
    _Answer, DEFAULT_BODIES, DEFAULT_PER_PAGE, DEFAULT_RATE_LIMIT, _error, _first, MAX_PER_PAGE,
    _not_found, RATE_WINDOW)


class Server:
    """The server's life and state, authentication, rate limit, faults, records, routing."""

    ROUTES = [
        ("GET", r"/rate_limit", "_get_rate_limit"),
    ]

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
        # Each part names its routes (method, path pattern, handler method) in ROUTES; the
        # patterns match whole paths and no path matches two of them, so their order is free.
        self._routes = [(method, re.compile(pattern + "$"), getattr(self, handler))
                        for cls in type(self).__mro__ for method, pattern, handler in cls.__dict__.get("ROUTES", ())]

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

    def _next_id(self, kind, start):
        with self._lock:
            counter = self._ids.setdefault(kind, itertools.count(start))
            return next(counter)

    def _now(self):
        return self._clock()

    def _iso(self, moment=None):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._now() if moment is None else moment))

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

    def _get_rate_limit(self, query, body, auth):
        rate = dict(self._rate(), resource="core")
        other = {"limit": 30, "remaining": 30, "reset": self._reset, "used": 0, "resource": "search"}
        return 200, {"resources": {"core": rate, "search": other}, "rate": rate}


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
