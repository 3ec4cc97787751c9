# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base of the image store modules: common store options, opening the store, errors.

A module builds ``ImageStoreModule(argument_spec={...its own options...}, ...)``: the options of
the ``testfleet.infra.image_store`` doc fragment are added, :meth:`ImageStoreModule.store` opens
the store (reading ``secret_key_file``; a missing boto3 fails with ``missing_required_lib``) and
:meth:`ImageStoreModule.fail_image` turns an :class:`~image_naming.ImageError` into ``fail_json``.
"""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

IMAGE_STORE_ARGUMENT_SPEC = dict(
    store_url=dict(type="str"),
    endpoint_url=dict(type="str"),
    region=dict(type="str"),
    access_key=dict(type="str", no_log=False),
    secret_key=dict(type="str", no_log=True),
    secret_key_file=dict(type="path", no_log=False),
    profile=dict(type="str"),
    ca_file=dict(type="path"),
    timeout=dict(type="float", default=60.0),
)


class ImageStoreModule(AnsibleModule):
    """AnsibleModule with testfleet's image store options and error handling."""

    def __init__(self, argument_spec, mutually_exclusive=None, **kwargs):
        spec = dict(IMAGE_STORE_ARGUMENT_SPEC)
        spec.update(argument_spec)
        super().__init__(argument_spec=spec,
                         mutually_exclusive=[("secret_key", "secret_key_file"), ("profile", "access_key")]
                         + list(mutually_exclusive or ()),
                         **kwargs)

    def _secret_key(self):
        params = self.params
        if params["secret_key_file"]:
            try:
                with open(params["secret_key_file"], "r") as handle:
                    secret = handle.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                self.fail_json(msg="cannot read secret_key_file %s: %s"
                               % (params["secret_key_file"], getattr(exc, "strerror", None) or type(exc).__name__))
            if not secret:
                self.fail_json(msg="secret_key_file %s is empty" % params["secret_key_file"])
            self.no_log_values.add(secret)
            return secret
        return params["secret_key"]

    def store(self, **options):
        """The store of ``store_url`` (``options`` go to :func:`images.open_store`), or fail."""
        params = self.params
        url = params["store_url"]
        if not url:
            self.fail_json(msg="store_url is required")
        s3 = url.startswith("s3://")
        if not s3:
            given = [name for name in ("endpoint_url", "access_key", "secret_key", "secret_key_file", "profile", "region")
                     if params[name]]
            if given:
                self.fail_json(msg="%s: only for an s3:// store_url" % ", ".join(given))
        secret = self._secret_key() if s3 else None
        if s3 and bool(params["access_key"]) != bool(secret):
            self.fail_json(msg="access_key and one of secret_key, secret_key_file go together")
        try:
            return images.open_store(url, endpoint_url=params["endpoint_url"], region=params["region"],
                                     access_key=params["access_key"], secret_key=secret, profile=params["profile"],
                                     ca_file=params["ca_file"], timeout=params["timeout"], **options)
        except images.MissingLibrary as exc:
            self.fail_json(msg=missing_required_lib(exc.library),
                           exception="".join(traceback.format_exception(None, exc.error, exc.error.__traceback__)))
        except image_naming.ImageError as exc:
            self.fail_image(exc)

    def fail_image(self, error, **result):
        """Fail the module with an ImageError's message (never carrying a secret)."""
        self.fail_json(msg=str(error), error=error.__class__.__name__, **result)
