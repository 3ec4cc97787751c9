# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base of every GitHub module: common API options, the forge client, error reporting.

A module builds ``ForgeModule(argument_spec={...its own options...}, ...)``: the options
documented in the ``testfleet.infra.forge`` doc fragment are added (exactly one of ``token``,
``token_file`` and ``app_id``; the app options together), :meth:`ForgeModule.client` returns a
:class:`~forge.ForgeClient` or fails saying what to fix, and :meth:`ForgeModule.fail_forge`
turns a :class:`~forge.ForgeError` into ``fail_json`` with GitHub's HTTP status.
"""

from __future__ import annotations

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.module_utils.forge import client as forge

FORGE_ARGUMENT_SPEC = dict(
    api_url=dict(type="str", default=forge.DEFAULT_API_URL),
    token=dict(type="str", no_log=True),
    token_file=dict(type="path", no_log=False),
    app_id=dict(type="int"),
    app_key_file=dict(type="path", no_log=False),
    installation_id=dict(type="int"),
    etag_cache_dir=dict(type="path"),
    timeout=dict(type="float", default=30.0),
    retries=dict(type="int", default=3),
    max_wait=dict(type="float", default=60.0),
)
CREDENTIAL_OPTIONS = ("token", "token_file", "app_id")
APP_OPTIONS = ("app_id", "app_key_file", "installation_id")
CLIENT_KEYS = ("api_url", "token", "token_file", "app_id", "app_key_file", "installation_id", "etag_cache_dir",
               "timeout", "retries", "max_wait")


def client_settings(params, config=None):
    """The :class:`~forge.ForgeClient` keyword arguments of a module's options; with a loaded
    testfleet ``config``, its ``forge`` section gives the API URL and credentials, and the ETag
    cache defaults to ``forge-cache/`` in its ``worker.work_dir``. Raises ForgeError when the
    config names no credentials."""
    settings = dict((key, params[key]) for key in CLIENT_KEYS)
    if config is not None:
        section = config.forge
        for key in ("api_url", "token_file", "app_id", "app_key_file", "installation_id"):
            settings[key] = section.get(key)
        if not settings["etag_cache_dir"]:
            settings["etag_cache_dir"] = section.get("etag_cache_dir")
        if not settings["etag_cache_dir"] and "worker" in config.given:
            settings["etag_cache_dir"] = os.path.join(config.worker["work_dir"], "forge-cache")
        if not any(settings[key] for key in CREDENTIAL_OPTIONS):
            raise forge.ForgeError("%s: forge.token_file is required" % config.path)
    return settings


class ForgeModule(AnsibleModule):
    """AnsibleModule with testfleet's GitHub options and error handling.

    ``with_config=True`` adds the option ``config`` (testfleet's config file, whose ``forge``
    section then stands for the credentials; the module documents it).
    """

    def __init__(self, argument_spec, mutually_exclusive=None, required_together=None, required_one_of=None,
                 with_config=False, **kwargs):
        spec = dict(FORGE_ARGUMENT_SPEC)
        credentials = CREDENTIAL_OPTIONS
        if with_config:
            spec["config"] = dict(type="path")
            credentials = CREDENTIAL_OPTIONS + ("config",)
        spec.update(argument_spec)
        super().__init__(argument_spec=spec,
                         mutually_exclusive=[credentials] + list(mutually_exclusive or ()),
                         required_together=[APP_OPTIONS] + list(required_together or ()),
                         required_one_of=[credentials] + list(required_one_of or ()),
                         **kwargs)
        self.config = None
        if self.params.get("config"):
            try:
                self.config = config_lib.load(self.params["config"])
            except config_lib.ConfigError as exc:
                self.fail_json(msg=str(exc))

    def client(self):
        """A :class:`~forge.ForgeClient` from the module's options, or fail saying what to fix."""
        if not forge.HAS_GITHUB:
            self.fail_json(msg=missing_required_lib("PyGithub"),
                           exception="".join(traceback.format_exception(
                               None, forge.GITHUB_IMPORT_ERROR, forge.GITHUB_IMPORT_ERROR.__traceback__)))
        try:
            return forge.ForgeClient(**client_settings(self.params, self.config))
        except forge.ForgeError as exc:
            self.fail_forge(exc)

    def fail_forge(self, error, **result):
        """Fail the module with a ForgeError's message (never carrying a secret) and HTTP status."""
        self.fail_json(msg=str(error), http_status=error.status, **result)
