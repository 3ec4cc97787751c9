# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one module wrapper of testfleet.infra: option families, their clients, one failure path.

A module builds ``AnsibleTestfleetModule(argument_spec={...its own options...}, families=(...), ...)``
(the other keyword arguments go to ``AnsibleModule``). Each family adds the options its doc
fragment ``testfleet.infra.<family>`` documents, with their constraints; a module combines
the families it needs (two families may not define the same option):

``amqp``         the broker connection: :meth:`amqp_settings`, :meth:`connect`, :meth:`publisher`;
                 a password in ``url`` is hidden from everything the module returns
``forge``        the GitHub API: exactly one of ``token``, ``token_file``, ``app_id`` (the app
                 options together); :meth:`forge_settings`, :meth:`forge_client`
``image_store``  the image store: :meth:`image_store` (a ``secret_key_file``'s content is hidden)
``config``       ``config``, testfleet's config file, loaded into :attr:`config`; its ``amqp``
                 and ``forge`` sections then stand for those families' options (with ``forge``,
                 ``config`` counts as the credentials)
``progress``     ``progress_log`` and ``progress_interval`` of the modules that move images:
                 :meth:`progress_log`, :meth:`elapsed`
``vm``           the QEMU VM of the modules that boot one (``accel``, ``kvm_probe_file``,
                 ``memory``, ``cpus``, ``qemu``): :meth:`vm_settings`

These methods raise domain errors (:data:`DOMAIN_ERRORS`, :class:`MissingLibrary`); nothing
but :meth:`fail` turns an error into ``fail_json``: its message (worded for the operator, never
carrying a secret) and what it names (``http_status``, ``error``, ``field``, ``key``,
``mismatches``). ``with module.reporting(result):`` fails with ``result`` on a domain error.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from urllib.parse import unquote, urlsplit

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.testfleet.infra.plugins.module_utils import amqp
from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.forge import client as forge
from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images.cache import ProgressLog
from ansible_collections.testfleet.infra.plugins.module_utils.images.refs import RefsFileError
from ansible_collections.testfleet.infra.plugins.module_utils.jobs import JobError
from ansible_collections.testfleet.infra.plugins.module_utils.testmap import TestMapError
from ansible_collections.testfleet.infra.plugins.module_utils.topology import TopologyError, TopologyMismatch
from ansible_collections.testfleet.infra.plugins.module_utils.vm import kvm

CREDENTIAL_OPTIONS = ("token", "token_file", "app_id")
S3_ONLY_OPTIONS = ("endpoint_url", "access_key", "secret_key", "secret_key_file", "profile", "region")

FAMILIES = {
    "amqp": dict(argument_spec=dict(
        url=dict(type="str", default=amqp.DEFAULT_URL),
        ca_file=dict(type="path"),
        cert_file=dict(type="path"),
        key_file=dict(type="path"),
        password_file=dict(type="path", no_log=False),
        heartbeat=dict(type="int", default=amqp.DEFAULT_HEARTBEAT),
        connect_timeout=dict(type="float", default=10.0),
    )),
    "forge": dict(argument_spec=dict(
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
    ), required_together=[("app_id", "app_key_file", "installation_id")]),
    "image_store": dict(argument_spec=dict(
        store_url=dict(type="str"),
        endpoint_url=dict(type="str"),
        region=dict(type="str"),
        access_key=dict(type="str", no_log=False),
        secret_key=dict(type="str", no_log=True),
        secret_key_file=dict(type="path", no_log=False),
        profile=dict(type="str"),
        ca_file=dict(type="path"),
        timeout=dict(type="float", default=60.0),
    ), mutually_exclusive=[("secret_key", "secret_key_file"), ("profile", "access_key")]),
    "config": dict(argument_spec=dict(config=dict(type="path"))),
    "progress": dict(argument_spec=dict(progress_log=dict(type="path"), progress_interval=dict(type="float", default=10.0))),
    "vm": dict(argument_spec=dict(
        accel=dict(type="str", choices=["auto", "kvm", "tcg"], default="auto"),
        kvm_probe_file=dict(type="path"),
        memory=dict(type="int", default=1024),
        cpus=dict(type="int", default=2),
        qemu=dict(type="str", default=kvm.DEFAULT_QEMU),
    )),
}
KVM_PROBE_FILE = "kvm-probe.json"

# the errors of module_utils, each worded for the operator
DOMAIN_ERRORS = (amqp.AmqpError, forge.ForgeError, images.ImageError, config_lib.ConfigError, TestMapError,
                 files.FileProblem, JobError, TopologyError, RefsFileError)


class MissingLibrary(Exception):
    """A Python library a family needs is not installed on the managed host."""

    def __init__(self, library, error):
        self.library = library
        self.error = error
        super().__init__("the Python library %s is not installed" % library)


class AnsibleTestfleetModule:
    """An ``AnsibleModule`` with testfleet's option families and its one failure path."""

    def __init__(self, argument_spec, families=(), mutually_exclusive=(), required_together=(), required_one_of=(),
                 **kwargs):
        spec, exclusive, together, one_of = {}, list(mutually_exclusive), list(required_together), \
            list(required_one_of)
        for family in families:
            parts = FAMILIES[family]
            clash = set(spec) & set(parts["argument_spec"])
            if clash:
                raise ValueError("the option families %s define %s both" % (", ".join(families), ", ".join(clash)))
            spec.update(parts["argument_spec"])
            exclusive += parts.get("mutually_exclusive", [])
            together += parts.get("required_together", [])
        if "forge" in families:
            credentials = CREDENTIAL_OPTIONS + (("config",) if "config" in families else ())
            exclusive.append(credentials)
            one_of.append(credentials)
        spec.update(argument_spec)
        self.started = time.monotonic()
        self.families = tuple(families)
        self.module = AnsibleModule(argument_spec=spec, mutually_exclusive=exclusive or None,
                                    required_together=together or None, required_one_of=one_of or None, **kwargs)
        if "amqp" in families:
            self._hide_url_password()
        self.config = None
        if self.params.get("config"):
            try:
                self.config = config_lib.load(self.params["config"])
            except config_lib.ConfigError as exc:
                self.fail(exc)

    # --- AnsibleModule ------------------------------------------------------------------------
    @property
    def params(self):
        return self.module.params

    @property
    def check_mode(self):
        return self.module.check_mode

    @property
    def diff(self):
        """Whether the task asked for a diff (``--diff``)."""
        return self.module._diff

    def warn(self, message):
        self.module.warn(message)

    def log(self, message):
        self.module.log(message)

    def get_bin_path(self, name):
        return self.module.get_bin_path(name)

    def exit_json(self, **result):
        self.module.exit_json(**result)

    def fail_json(self, msg, **result):
        self.module.fail_json(msg=msg, **result)

    # --- the one failure path -----------------------------------------------------------------
    def fail(self, error, **result):
        """Fail the module with ``error``'s message and what it names; ``result`` goes along."""
        if isinstance(error, (MissingLibrary, images.MissingLibrary)):
            self.module.fail_json(msg=missing_required_lib(error.library), exception="".join(
                traceback.format_exception(None, error.error, error.error.__traceback__)), **result)
        details = {}
        if isinstance(error, forge.ForgeError):
            details["http_status"] = error.status
        if isinstance(error, (amqp.AmqpError, images.ImageError)):
            details["error"] = error.__class__.__name__
        if isinstance(error, JobError):
            details["field"] = error.field
        if isinstance(error, TopologyError):
            details["key"] = error.key
        if isinstance(error, TopologyMismatch):
            details["mismatches"] = error.mismatches
        result.update(details)
        self.module.fail_json(msg=str(error), **result)

    @contextlib.contextmanager
    def reporting(self, result=None, errors=()):
        """Fail through :meth:`fail` (with ``result``, as it is then) on a domain error, a
        :class:`MissingLibrary` or one of ``errors``."""
        try:
            yield
        except DOMAIN_ERRORS + (MissingLibrary,) + tuple(errors) as exc:
            self.fail(exc, **(result or {}))

    # --- amqp ---------------------------------------------------------------------------------
    def _hide_url_password(self):
        """Mask the URL's password (raw and percent-decoded) in every result and message."""
        try:
            password = urlsplit(self.params["url"]).password
        except ValueError:
            return
        if password:
            self.module.no_log_values.update((password, unquote(password)))

    def amqp_settings(self):
        """The broker connection: the config file's ``amqp`` section, else the options."""
        name = "ansible %s" % self.module._name
        if self.config is not None:
            return self.config.amqp_settings(connection_name=name)
        return amqp.AmqpSettings.from_mapping(self.params, connection_name=name)

    def connect(self):
        """A ``pika.BlockingConnection``; raise AmqpError (saying what to fix) or MissingLibrary."""
        if not amqp.HAS_PIKA:
            raise MissingLibrary("pika", amqp.PIKA_IMPORT_ERROR)
        return amqp.connect(self.amqp_settings())

    def publisher(self):
        """A confirmed publisher that connects when first :meth:`~BrokerPublisher.ready`."""
        return BrokerPublisher(self.connect)

    # --- forge --------------------------------------------------------------------------------
    def forge_settings(self):
        """The :class:`~forge.ForgeClient` keyword arguments: the options, or with a config file
        its ``forge`` section (the ETag cache then defaults to ``forge-cache/`` in its
        ``worker.work_dir``). Raise ForgeError when the config file names no credentials."""
        settings = dict((key, self.params[key]) for key in FAMILIES["forge"]["argument_spec"])
        if self.config is not None:
            section = self.config.forge
            for key in ("api_url", "token_file", "app_id", "app_key_file", "installation_id"):
                settings[key] = section.get(key)
            if not settings["etag_cache_dir"]:
                settings["etag_cache_dir"] = section.get("etag_cache_dir")
            if not settings["etag_cache_dir"] and "worker" in self.config.given:
                settings["etag_cache_dir"] = os.path.join(self.config.worker["work_dir"], "forge-cache")
            if not any(settings[key] for key in CREDENTIAL_OPTIONS):
                raise forge.ForgeError("%s: forge.token_file is required" % self.config.path)
        return settings

    def forge_client(self):
        """A :class:`~forge.ForgeClient`; raise ForgeError or MissingLibrary."""
        if not forge.HAS_GITHUB:
            raise MissingLibrary("PyGithub", forge.GITHUB_IMPORT_ERROR)
        return forge.ForgeClient(**self.forge_settings())

    # --- image_store --------------------------------------------------------------------------
    def image_store(self, **options):
        """The store of ``store_url`` (``options`` go to :func:`images.open_store`); raise
        ImageError, FileProblem or images.MissingLibrary."""
        params = self.params
        url = params["store_url"]
        if not url:
            raise images.ImageStoreError("store_url is required")
        s3 = url.startswith("s3://")
        given = [name for name in S3_ONLY_OPTIONS if params[name]]
        if given and not s3:
            raise images.ImageStoreError("%s: only for an s3:// store_url" % ", ".join(given))
        secret = params["secret_key"]
        if s3 and params["secret_key_file"]:
            secret = files.read_secret(params["secret_key_file"], "S3 secret key")
            self.module.no_log_values.add(secret)
        if s3 and bool(params["access_key"]) != bool(secret):
            raise images.ImageStoreError("access_key and one of secret_key, secret_key_file go together")
        return images.open_store(url, endpoint_url=params["endpoint_url"], region=params["region"],
                                 access_key=params["access_key"], secret_key=secret, profile=params["profile"],
                                 ca_file=params["ca_file"], timeout=params["timeout"], **options)

    # --- progress -----------------------------------------------------------------------------
    def progress_log(self, label, default=None):
        """A :class:`ProgressLog` labelled ``label`` into ``progress_log``, else ``default``
        (with neither, it writes nothing), every ``progress_interval`` seconds."""
        return ProgressLog(self.params["progress_log"] or default, label, interval=self.params["progress_interval"])

    def elapsed(self):
        """Seconds since the module started (three decimals), the ``duration`` it returns."""
        return round(time.monotonic() - self.started, 3)

    # --- vm -----------------------------------------------------------------------------------
    def vm_settings(self, cache_dir):
        """The VM options as keyword arguments (``accel``, ``kvm_probe_file``, ``memory``,
        ``cpus``, ``qemu``); ``kvm_probe_file`` defaults to ``kvm-probe.json`` in ``cache_dir``."""
        settings = dict((key, self.params[key]) for key in FAMILIES["vm"]["argument_spec"])
        settings["kvm_probe_file"] = settings["kvm_probe_file"] or os.path.join(cache_dir, KVM_PROBE_FILE)
        return settings


class BrokerPublisher:
    """:class:`amqp.ConfirmedPublisher` on a connection made by ``connect`` when first needed.

    ``ready()`` connects (raising AmqpError when the broker cannot be reached), so that a caller
    can make sure of the broker before it does what a message must follow; ``publish`` is the
    confirmed publisher's; ``close()`` closes the connection, if any, and never raises.
    """

    def __init__(self, connect):
        self._connect = connect
        self._publisher = None

    def ready(self):
        if self._publisher is None:
            self._publisher = amqp.ConfirmedPublisher(self._connect())

    def publish(self, exchange, routing_key, body, message_id=None, **properties):
        self.ready()
        self._publisher.publish(exchange, routing_key, body, message_id=message_id, **properties)

    def close(self):
        if self._publisher is not None:
            try:
                self._publisher.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass
