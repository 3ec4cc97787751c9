# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The configuration file of testfleet's programs: one YAML file per host, read by all of them.

``testfleet-webhook --config FILE``, ``testfleet-worker --config FILE`` and ``testfleet --config
FILE`` read the same file; each program uses the sections it needs (:meth:`Config.section`
checks that the keys a program requires are there). Every key is validated when the file is
loaded; an unknown section or key is an error, so a typo never silently means "the default".
Errors name the file, the section and the key (``/etc/testfleet/config.yml: webhook.listen:
...``) and never quote a secret.

Secrets never sit in this file: it names the files that hold them (``secret_files``,
``password_file``, ``token_file``). Relative paths are relative to the directory of the config
file.

Keys (``-`` in the default column: no default; "required" keys must be given when a program
uses the section):

================================ ================= =============================================
key                              default           meaning
================================ ================= =============================================
``amqp.url``                     amqp://127.0.0.1  ``amqp[s]://[user@]host[:port]/[vhost]``; a
                                 :5672/            password belongs in ``password_file``
``amqp.ca_file``                 -                 CA bundle of the broker's certificate (amqps)
``amqp.cert_file``               -                 client certificate (EXTERNAL authentication)
``amqp.key_file``                -                 its private key
``amqp.password_file``           -                 file holding the password of the URL's user
``amqp.heartbeat``               60                AMQP heartbeat in seconds (0: none)
``webhook.listen``               127.0.0.1:8080    ``host:port`` to listen on (``[::1]:8080``)
``webhook.path``                 /webhook          URL path GitHub posts to
``webhook.secret_files``         required          files holding the hook secrets; a delivery
                                                   signed with any of them is accepted (rotation)
``webhook.allow_sha1``           false             also accept the legacy SHA-1 ``X-Hub-Signature``
``webhook.max_body_bytes``       26214400 (25 MiB) larger bodies are answered 413
``webhook.events``               see EVENTS        event -> list of actions, or null for all
``webhook.queue``                events            queue the deliveries are published to, through
                                                   the topology's exchange; one of its queues
``webhook.publish_timeout``      10                seconds to wait for the broker's confirm
``webhook.retry_after``          30                ``Retry-After`` of the 503 answers (seconds)
``webhook.tls_cert_file``        -                 serve HTTPS with this certificate (chain) ...
``webhook.tls_key_file``         -                 ... and key; without them: plain HTTP
``worker.queues``                required          queues this worker consumes (capabilities)
``worker.slots``                 1                 jobs run at the same time
``worker.default_timeout``       7200              seconds, for jobs that name no timeout
``worker.work_dir``              /var/lib/testfleet where job checkouts and runner folders go
                                 /work
``worker.metrics_dir``           /var/lib/testfleet where the worker writes its metrics
                                 /metrics
``worker.host_name``             (host name)       name shown in statuses and logs
``worker.drain_timeout``         -                 seconds a stopping worker waits for its job
                                                   (none: until it ends)
``worker.retry_delay``           10                seconds before a failed job is requeued
``worker.clone_url``             https://github.   clone URL template; ``{repo}`` is owner/name
                                 com/{repo}.git
``worker.log_flush_interval``    2                 seconds between log uploads while a job runs
``worker.log_flush_bytes``       65536             ... or after this many new bytes
``worker.upload_timeout``        60                seconds an upload of the log store may take
``worker.pull_check_interval``   30                seconds between checks that a running test
                                                   job's pull request is still open at its commit
                                                   (else the job stops: ``superseded``)
``log_store.url``                required          ``s3://bucket/prefix`` or ``file:///dir``
``log_store.endpoint_url``       -                 S3-compatible server (default: AWS)
``log_store.public_url``         -                 base URL that status links point at
``log_store.region``             -                 S3 region (default: AWS_DEFAULT_REGION)
``forge.api_url``                https://api.      GitHub REST API base URL
                                 github.com
``forge.token_file``             required          file holding the GitHub token
``images.store_url``             required          the image store: ``s3://bucket/prefix`` or
                                                   ``file:///dir`` (see docs/images.md)
``images.endpoint_url``          -                 S3-compatible server (default: AWS)
``images.region``                -                 S3 region
``images.access_key``            -                 S3 access key id (default: boto3's own
                                                   sources: environment, instance profile)
``images.secret_key_file``       -                 file holding the S3 secret key
``images.ca_file``               -                 CA bundle of the S3 endpoint
``images.recipes_dir``           /etc/testfleet/   where the refresh job finds ``<name>.yml``
                                 images            recipes
``images.build_dir``             /var/lib/testfleet where built images are written
                                 /images
``images.build_cache_dir``       /var/cache/       debootstrap bases kept between builds
                                 testfleet/vm-build
``images.cache_dir``             /var/cache/       the worker's cache of fetched images
                                 testfleet/images
``images.refs_file``             .testfleet/       the references file in tested repositories
                                 images.yml
``images.keep_days``             30                the prune job removes unreferenced images
                                                   older than this many days
``testmap``                      -                 path of the test map (a top-level key)
``topology``                     DEFAULT_TOPOLOGY  the queue topology (a top-level key): the
                                                   description ``amqp_topology`` applies (see
                                                   ``topology.py``); programs declare the queues
                                                   they use with it
================================ ================= =============================================

Default ``webhook.events`` (:data:`DEFAULT_EVENTS`): the events and actions testfleet scans for,
and ``ping``, as ``webhook_events.py`` defines them.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from urllib.parse import urlsplit

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.amqp import AmqpSettings, redact_url
from ansible_collections.testfleet.infra.plugins.module_utils import topology as topology_lib
from ansible_collections.testfleet.infra.plugins.module_utils import webhook_events

# Where the programs read their config file: --config, else $TESTFLEET_CONFIG, else this path.
DEFAULT_PATH = "/etc/testfleet/config.yml"
PATH_ENV = "TESTFLEET_CONFIG"
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
DEFAULT_EVENTS = webhook_events.default_filter()  # the events testfleet scans for, and ping
EVENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,255}$")


class ConfigError(ValueError):
    """A problem with the config file, worded as ``FILE: section.key: what is wrong``."""


class _Invalid(Exception):
    """Raised by a validator; the loader adds the file and the key to the message."""


# Validators: take the value (never None) and the config file's directory; return the value to
# keep or raise _Invalid with what the value must be. Messages do not quote values that could
# be secrets.

def _string(value, base):
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a non-empty string, not %s" % files.type_name(value))
    return value


def _path(value, base):
    _string(value, base)
    path = os.path.expanduser(value)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def _paths(value, base):
    if isinstance(value, str):
        raise _Invalid("must be a list of file paths (write [%s] for one file)" % value)
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a non-empty list of file paths, not %s" % files.type_name(value))
    return [_item(_path, item, base, index) for index, item in enumerate(value)]


def _item(validator, value, base, index):
    try:
        return validator(value, base)
    except _Invalid as exc:
        raise _Invalid("item %d %s" % (index + 1, exc))


def _boolean(value, base):
    if not isinstance(value, bool):
        raise _Invalid("must be true or false, not %s" % files.type_name(value))
    return value


def _integer(low, high=None):
    what = {0: "an integer, 0 or more", 1: "a positive integer"}.get(low, "an integer from %d" % low)
    if high is not None:
        what += " (at most %d)" % high

    def check(value, base):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid("must be %s, not %s" % (what, files.type_name(value)))
        if value < low or (high is not None and value > high):
            raise _Invalid("must be %s, not %d" % (what, value))
        return value
    return check


def _seconds(maximum, zero=False):
    what = "a number of seconds, 0 or more" if zero else "a positive number of seconds"
    what += " (at most %d)" % maximum

    def check(value, base):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid("must be %s, not %s" % (what, files.type_name(value)))
        if not (0 <= value if zero else 0 < value) or value > maximum:
            raise _Invalid("must be %s, not %s" % (what, value))
        return float(value)
    return check


def _url(schemes):
    def check(value, base):
        _string(value, base)
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise _Invalid("must be a URL starting with %s, not %s" % (
                " or ".join("%s://" % s for s in schemes), redact_url(value)))
        if parts.scheme != "file" and not parts.hostname:
            raise _Invalid("names no host: %s" % redact_url(value))
        try:
            parts.port
        except ValueError:
            raise _Invalid("has an invalid port: %s" % redact_url(value))
        return value
    return check


def parse_listen(value):
    """``"host:port"`` (or ``"[v6]:port"``) -> ``(host, port)``; raise ValueError if invalid."""
    match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:\s]+)):(\d{1,5})$", value)
    if not match or int(match.group(3)) > 65535:
        raise ValueError("must be 'host:port' (for example 127.0.0.1:8080 or [::1]:8080), not %r"
                         % value)
    return match.group(1) or match.group(2), int(match.group(3))


def _listen(value, base):
    _string(value, base)
    try:
        parse_listen(value)
    except ValueError as exc:
        raise _Invalid(str(exc))
    return value


def _url_path(value, base):
    _string(value, base)
    if not value.startswith("/") or any(c in value for c in "?# \t"):
        raise _Invalid("must be a URL path starting with '/' (no query, no spaces), not %r" % value)
    return value


def _name(value, base):
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _Invalid("must be an AMQP name (letters, digits, '.', '_', ':', '-'), not %s"
                       % (repr(value) if isinstance(value, str) else files.type_name(value)))
    return value


def _names(value, base):
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a non-empty list of queue names, not %s" % files.type_name(value))
    return [_item(_name, item, base, index) for index, item in enumerate(value)]


def _events(value, base):
    if not isinstance(value, dict):
        raise _Invalid("must be a mapping of event name to a list of actions (or null for all "
                       "actions), not %s" % files.type_name(value))
    events = {}
    for event, actions in value.items():
        if not isinstance(event, str) or not EVENT_RE.match(event):
            raise _Invalid("has an invalid event name %r (GitHub event names are lower-case "
                           "words joined by '_', such as pull_request)" % (event,))
        if actions is None:
            events[event] = None
            continue
        if not isinstance(actions, list) or not all(isinstance(a, str) and EVENT_RE.match(a)
                                                    for a in actions):
            raise _Invalid("%s: must be a list of actions (such as [opened, synchronize]) or "
                           "null for all actions" % event)
        events[event] = list(actions)
    return events


class Key:
    """One key of a section: its validator, default, whether a program using it needs it."""

    __slots__ = ("check", "default", "required")

    def __init__(self, check, default=None, required=False):
        self.check = check
        self.default = default
        self.required = required


SCHEMA = {
    "amqp": {
        "url": Key(_url(("amqp", "amqps")), "amqp://127.0.0.1:5672/"),
        "ca_file": Key(_path),
        "cert_file": Key(_path),
        "key_file": Key(_path),
        "password_file": Key(_path),
        "heartbeat": Key(_integer(0, 3600), 60),
    },
    "webhook": {
        "listen": Key(_listen, "127.0.0.1:8080"),
        "path": Key(_url_path, "/webhook"),
        "secret_files": Key(_paths, required=True),
        "allow_sha1": Key(_boolean, False),
        "max_body_bytes": Key(_integer(1, 1024 ** 3), DEFAULT_MAX_BODY_BYTES),
        "events": Key(_events, DEFAULT_EVENTS),
        "queue": Key(_name, "events"),
        "publish_timeout": Key(_seconds(3600), 10.0),
        "retry_after": Key(_integer(1, 3600), 30),
        "tls_cert_file": Key(_path),
        "tls_key_file": Key(_path),
    },
    "worker": {
        "queues": Key(_names, required=True),
        "slots": Key(_integer(1, 1024), 1),
        "default_timeout": Key(_integer(1, 7 * 24 * 3600), 7200),
        "work_dir": Key(_path, "/var/lib/testfleet/work"),
        "metrics_dir": Key(_path, "/var/lib/testfleet/metrics"),
        "host_name": Key(_string),
        "drain_timeout": Key(_seconds(7 * 24 * 3600)),
        "retry_delay": Key(_seconds(24 * 3600, zero=True), 10.0),
        "clone_url": Key(_string, "https://github.com/{repo}.git"),
        "log_flush_interval": Key(_seconds(3600), 2.0),
        "log_flush_bytes": Key(_integer(1, 1024 ** 3), 65536),
        "upload_timeout": Key(_seconds(24 * 3600), 60.0),
        "pull_check_interval": Key(_seconds(3600), 30.0),
    },
    "log_store": {
        "url": Key(_url(("s3", "file")), required=True),
        "endpoint_url": Key(_url(("http", "https"))),
        "public_url": Key(_url(("http", "https"))),
        "region": Key(_string),
    },
    "forge": {
        "api_url": Key(_url(("http", "https")), "https://api.github.com"),
        "token_file": Key(_path, required=True),
    },
    "images": {
        "store_url": Key(_url(("s3", "file")), required=True),
        "endpoint_url": Key(_url(("http", "https"))),
        "region": Key(_string),
        "access_key": Key(_string),
        "secret_key_file": Key(_path),
        "ca_file": Key(_path),
        "recipes_dir": Key(_path, "/etc/testfleet/images"),
        "build_dir": Key(_path, "/var/lib/testfleet/images"),
        "build_cache_dir": Key(_path, "/var/cache/testfleet/vm-build"),
        "cache_dir": Key(_path, "/var/cache/testfleet/images"),
        "refs_file": Key(_string, ".testfleet/images.yml"),
        "keep_days": Key(_integer(0, 3650), 30),
    },
}


def _topology(value, base):
    try:
        topology_lib.expand(value)
    except topology_lib.TopologyError as exc:
        raise _Invalid("is not a valid topology description: %s %s" % (exc.key, exc.problem))
    return value


# Top-level keys that hold a value instead of a section.
SCALARS = {
    "testmap": Key(_path),
    "topology": Key(_topology, {}),
}
SECRET_HINT = ("secrets are never written in the config file: name a file that holds it "
               "(secret_files, password_file, token_file)")


def _unknown(where, key, known):
    hint = difflib.get_close_matches(str(key), known, n=1)
    text = "%s: unknown key %r" % (where, key) if where else "unknown section %r" % (key,)
    if hint:
        text += " (did you mean %r?)" % hint[0]
    elif any(word in str(key).lower() for word in ("secret", "password", "token")):
        text += " (%s)" % SECRET_HINT
    else:
        text += " (known: %s)" % ", ".join(sorted(known))
    return text


class Config:
    """A validated config file. Sections are plain dicts with every key (defaults filled in).

    ``config.section("webhook")`` checks the keys that a program using the section must have;
    ``config.amqp_settings()`` is the connection the ``amqp`` section describes.
    """

    def __init__(self, path, sections, scalars, given):
        self.path = path
        self._sections = sections
        self._scalars = scalars
        self.given = frozenset(given)

    def __getattr__(self, name):
        if name in SCHEMA:
            return self._sections[name]
        if name in SCALARS:
            return self._scalars[name]
        raise AttributeError(name)

    def section(self, name):
        """The section ``name``; raise ConfigError if a key it requires is missing."""
        values = self._sections[name]
        missing = [k for k, key in SCHEMA[name].items() if key.required and values[k] is None]
        if missing:
            raise ConfigError("%s: %s.%s is required%s" % (
                self.path, name, missing[0],
                "" if name in self.given else " (the file has no %s section)" % name))
        return values

    def amqp_settings(self, connection_name=None):
        """The :class:`AmqpSettings` of the ``amqp`` section."""
        return AmqpSettings.from_mapping(self._sections["amqp"], connection_name=connection_name)


def validate(data, path="(config)"):
    """Validate an already parsed config mapping; return a :class:`Config`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("%s: the file must hold a mapping of sections (amqp, webhook, ...), "
                          "not %s" % (path, files.type_name(data)))
    base = os.path.dirname(os.path.abspath(path))
    sections, scalars = {}, {}
    known = sorted(set(SCHEMA) | set(SCALARS))
    for name in data:
        if name not in SCHEMA and name not in SCALARS:
            raise ConfigError("%s: %s" % (path, _unknown(None, name, known)))
    for name, keys in SCHEMA.items():
        given = data.get(name)
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ConfigError("%s: %s: must be a mapping of keys, not %s"
                              % (path, name, files.type_name(given)))
        for key in given:
            if key not in keys:
                raise ConfigError("%s: %s" % (path, _unknown(name, key, sorted(keys))))
        values = {}
        for key, spec in keys.items():
            value = given.get(key)
            if value is None:
                values[key] = copy.deepcopy(spec.default)
                continue
            try:
                values[key] = spec.check(value, base)
            except _Invalid as exc:
                raise ConfigError("%s: %s.%s %s" % (path, name, key, exc))
        sections[name] = values
    for name, spec in SCALARS.items():
        value = data.get(name)
        try:
            scalars[name] = copy.deepcopy(spec.default) if value is None else spec.check(value, base)
        except _Invalid as exc:
            raise ConfigError("%s: %s %s" % (path, name, exc))
    given = [n for n in data if data[n] is not None]
    _cross_check(path, sections, scalars, given)
    return Config(path, sections, scalars, given)


def _cross_check(path, sections, scalars, given):
    amqp = sections["amqp"]
    try:
        AmqpSettings.from_mapping(amqp).validate()
    except Exception as exc:  # AmqpError: its message names the key and never the password
        raise ConfigError("%s: amqp: %s" % (path, exc))
    webhook = sections["webhook"]
    if bool(webhook["tls_cert_file"]) != bool(webhook["tls_key_file"]):
        raise ConfigError("%s: webhook: tls_cert_file and tls_key_file go together (give both "
                          "to serve HTTPS, or neither)" % path)
    queues = [q["name"] for q in topology_lib.expand(scalars["topology"])["queues"][1:]]
    for section, key, names in (("webhook", "queue", [webhook["queue"]]),
                                ("worker", "queues", sections["worker"]["queues"] or [])):
        for name in names if section in given else ():
            if name not in queues:
                raise ConfigError("%s: %s.%s: %r is not a work queue of the topology (its queues: "
                                  "%s; add it to the top-level topology key)"
                                  % (path, section, key, name, ", ".join(queues)))


HAS_YAML = files.HAS_YAML


def load(path):
    """Read and validate the config file at ``path``; raise ConfigError naming what is wrong."""
    try:
        data = files.load_yaml_file(path, "config file")
    except files.FileProblem as exc:
        raise ConfigError(str(exc)) from None
    return validate(data, path)


def default_path():
    """The config file a program reads without ``--config``: ``$TESTFLEET_CONFIG``, else DEFAULT_PATH."""
    return os.environ.get(PATH_ENV) or DEFAULT_PATH


def read_secret_file(path, what="secret"):
    """The content of a secret file (bytes, surrounding white space removed), as
    :func:`files.read_secret` reads it; raise ConfigError naming the file, never its content."""
    try:
        return files.read_secret(path, what).encode("utf-8")
    except files.FileProblem as exc:
        raise ConfigError(str(exc)) from None
