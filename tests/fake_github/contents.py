# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files and refs through the API: ``/repos/{repo}/contents/{path}`` (base64, blob SHAs, 409
on a stale ``sha``) and ``/repos/{repo}/git/refs`` (a move that is no fast-forward needs
``force``)."""

from __future__ import annotations

import base64
from urllib.parse import quote

from .common import _error, _first, _node_id, _not_found, SHA_RE


class Contents:
    """The contents API and git refs."""

    ROUTES = [
        ("GET", r"/repos/([^/]+/[^/]+)/contents/(.+)", "_get_contents"),
        ("PUT", r"/repos/([^/]+/[^/]+)/contents/(.+)", "_put_contents"),
        ("GET", r"/repos/([^/]+/[^/]+)/git/ref/heads/(.+)", "_get_git_ref"),
        ("POST", r"/repos/([^/]+/[^/]+)/git/refs", "_post_git_ref"),
        ("PATCH", r"/repos/([^/]+/[^/]+)/git/refs/heads/(.+)", "_patch_git_ref"),
    ]

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
