# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pull requests and issue comments: ``/repos/{repo}/pulls``, ``/repos/{repo}/issues/{n}/comments``."""

from __future__ import annotations

from urllib.parse import quote

from .common import _error, _first, _node_id, _not_found, _validation_failed


class Pulls:
    """Pull requests and their comments."""

    ROUTES = [
        ("GET", r"/repos/([^/]+/[^/]+)/pulls", "_get_pulls"),
        ("GET", r"/repos/([^/]+/[^/]+)/pulls/([0-9]+)", "_get_pull"),
        ("POST", r"/repos/([^/]+/[^/]+)/pulls", "_post_pull"),
        ("PATCH", r"/repos/([^/]+/[^/]+)/pulls/([0-9]+)", "_patch_pull"),
        ("GET", r"/repos/([^/]+/[^/]+)/issues/([0-9]+)/comments", "_get_comments"),
        ("POST", r"/repos/([^/]+/[^/]+)/issues/([0-9]+)/comments", "_post_comment"),
    ]

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
