# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Repositories, branches and commits: ``/repos/{repo}``, ``/repos/{repo}/branches``; commits
hold files and move the heads of the open pull requests of their branch."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote

from .common import _error, HEX_REF_RE, _node_id, _not_found


class Repos:
    """Repositories, branches and commits (files held per commit)."""

    ROUTES = [
        ("GET", r"/repos/([^/]+/[^/]+)", "_get_repo"),
        ("GET", r"/repos/([^/]+/[^/]+)/branches", "_get_branches"),
        ("GET", r"/repos/([^/]+/[^/]+)/branches/(.+)", "_get_branch"),
    ]

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

    def _get_repo(self, repo, query, body, auth):
        self._repo(repo)
        data = self._repo_body(repo)
        data["permissions"] = {"admin": True, "maintain": True, "push": True, "triage": True, "pull": True}
        return 200, data

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
