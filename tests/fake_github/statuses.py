# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Commit statuses: ``/repos/{repo}/statuses/{sha}`` (422 for a bad state, a long description,
an unknown SHA, the 1001st status of a SHA and context), ``/commits/{ref}/status(es)``."""

from __future__ import annotations


from .common import _error, MAX_DESCRIPTION, MAX_STATUSES, _node_id, SHA_RE, STATUS_STATES, _validation_failed


class Statuses:
    """Commit statuses and combined statuses."""

    ROUTES = [
        ("GET", r"/repos/([^/]+/[^/]+)/commits/(.+)/status", "_get_combined_status"),
        ("GET", r"/repos/([^/]+/[^/]+)/commits/(.+)/statuses", "_get_statuses"),
        ("POST", r"/repos/([^/]+/[^/]+)/statuses/([^/]+)", "_post_status"),
    ]

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
