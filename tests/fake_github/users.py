# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Users, organisations and permissions: user bodies, ``author_association``, ``/orgs/.../members``,
``/repos/.../collaborators/.../permission``."""

from __future__ import annotations

from urllib.parse import quote

from .common import _error, LEGACY_PERMISSION, _node_id, _not_found, PERMISSIONS


class Users:
    """Users, organisation members and collaborator permissions."""

    ROUTES = [
        ("GET", r"/orgs/([^/]+)/members/([^/]+)", "_get_org_member"),
        ("GET", r"/repos/([^/]+/[^/]+)/collaborators/([^/]+)/permission", "_get_permission"),
    ]

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

    def _association(self, repo, user):
        owner = repo.split("/")[0]
        if user == owner:
            return "OWNER"
        if user in self._orgs.get(owner, ()):
            return "MEMBER"
        if self._repos[repo]["permissions"].get(user, "none") not in ("none", "read"):
            return "COLLABORATOR"
        return "NONE"

    def _get_org_member(self, org, user, query, body, auth):
        if org not in self._orgs:
            raise _not_found()
        if user not in self._orgs[org]:
            raise _error(404, "User does not exist or is not a member of the organization")
        return 204, None

    def _get_permission(self, repo, user, query, body, auth):
        data = self._repo(repo)
        default = "none" if data["private"] else "read"
        role = data["permissions"].get(user, default)
        return 200, {"permission": LEGACY_PERMISSION[role], "role_name": role, "user": self._user(user)}
