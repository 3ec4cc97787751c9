# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Repository webhooks: ``/repos/{repo}/hooks``; the secret is stored, never returned, and a
``PATCH`` with a ``config`` replaces the whole config."""

from __future__ import annotations

import copy

from .common import _not_found, _validation_failed


class Hooks:
    """Repository webhooks."""

    ROUTES = [
        ("GET", r"/repos/([^/]+/[^/]+)/hooks", "_get_hooks"),
        ("POST", r"/repos/([^/]+/[^/]+)/hooks", "_post_hook"),
        ("GET", r"/repos/([^/]+/[^/]+)/hooks/([0-9]+)", "_get_hook"),
        ("PATCH", r"/repos/([^/]+/[^/]+)/hooks/([0-9]+)", "_patch_hook"),
        ("DELETE", r"/repos/([^/]+/[^/]+)/hooks/([0-9]+)", "_delete_hook"),
    ]

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
