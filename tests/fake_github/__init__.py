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

Run it alone with ``python tests/fake_github --port 8081 --repo owner/name``: it prints its
URL and token as one JSON line and serves until interrupted.

The parts, one concern a module, each a mixin of :class:`FakeGitHub` that names its routes:
``server`` (state, HTTP, authentication, rate limit, faults, records, routing, pagination),
``users`` (users, organisations, permissions), ``repos`` (repositories, branches, commits),
``contents`` (the contents API, git refs), ``pulls`` (pull requests, comments), ``statuses``,
``hooks``, ``app_auth`` (GitHub App JWTs and installation tokens); ``common`` holds the limits
and GitHub's error bodies. ``tests/conftest.py`` loads this package as the module
``fake_github``.
"""

from __future__ import annotations

import argparse
import json
import time

from .app_auth import AppAuth
from .contents import Contents
from .hooks import Hooks
from .pulls import Pulls
from .repos import Repos
from .server import Server
from .statuses import Statuses
from .users import Users

__all__ = ["FakeGitHub", "main"]


class FakeGitHub(Server, Users, Repos, Contents, Pulls, Statuses, Hooks, AppAuth):
    """The fake server and its state; a context manager that starts and stops it.

    ``token``: the token it accepts (random by default); ``login``: the user that token
    belongs to (the creator of what it posts); ``clock``: epoch seconds for timestamps and the
    rate-limit window; ``rate_limit``: requests per hour.
    """


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
