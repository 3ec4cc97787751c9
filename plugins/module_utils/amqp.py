# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place that turns testfleet's AMQP settings into a broker connection.

Modules, the webhook and the worker all connect through here, so that TLS, client
certificates (EXTERNAL authentication), heartbeats and the wording of connection errors are
the same everywhere. Secrets (a password in the URL or in ``password_file``) never appear in
an error message or in ``repr`` of the settings: use :func:`redact_url` for anything shown.
"""

from __future__ import annotations

import datetime
import os
import ssl
import time
from urllib.parse import unquote, urlsplit, urlunsplit

try:
    import pika
    import pika.credentials
    import pika.exceptions
    HAS_PIKA = True
    PIKA_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    pika = None
    HAS_PIKA = False
    PIKA_IMPORT_ERROR = exc

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.redact import MASK

DEFAULT_URL = "amqp://127.0.0.1:5672/"
DEFAULT_HEARTBEAT = 60


class AmqpError(Exception):
    """A broker problem, worded for the person who has to fix it."""


class BrokerUnreachable(AmqpError):
    """No TCP or TLS session could be made with the broker."""


class AuthenticationFailed(AmqpError):
    """The broker refused the credentials or the vhost."""


class TlsError(AmqpError):
    """The TLS handshake failed or the TLS files are unusable."""


class PublishRefused(AmqpError):
    """The broker did not confirm a message (nack, unroutable, or the channel closed)."""


def redact_url(url):
    """Return ``url`` with any password replaced by :data:`~.redact.MASK`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, hostport = parts.netloc.rsplit("@", 1)  # not .port: it raises on a bad port
    netloc = "%s:%s@%s" % (userinfo.split(":", 1)[0], MASK, hostport)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class AmqpSettings:
    """Where and how to connect: the ``amqp`` section of the config file, or module options.

    ``url``: ``amqp://[user[:password]@]host[:port]/[vhost]`` or ``amqps://...``.
    ``ca_file``: CA bundle that signed the broker's certificate (amqps only; default: system CAs).
    ``cert_file``/``key_file``: client certificate and key; with them the connection uses
    EXTERNAL authentication (the certificate's subject is the user) unless the URL names a user.
    ``password_file``: file holding the password of the URL's user (keeps it out of the URL).
    """

    __slots__ = ("url", "ca_file", "cert_file", "key_file", "password_file", "heartbeat",
                 "connection_name", "connect_timeout", "verify_hostname")

    def __init__(self, url=DEFAULT_URL, ca_file=None, cert_file=None, key_file=None,
                 password_file=None, heartbeat=DEFAULT_HEARTBEAT, connection_name=None,
                 connect_timeout=10.0, verify_hostname=True):
        self.url = url or DEFAULT_URL
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self.password_file = password_file
        self.heartbeat = DEFAULT_HEARTBEAT if heartbeat is None else int(heartbeat)
        self.connection_name = connection_name
        self.connect_timeout = float(connect_timeout)
        self.verify_hostname = verify_hostname

    @classmethod
    def from_mapping(cls, mapping, connection_name=None):
        """Build settings from a config-file section or module params (unknown keys ignored)."""
        keys = ("url", "ca_file", "cert_file", "key_file", "password_file", "heartbeat",
                "connect_timeout", "verify_hostname")
        kwargs = dict((k, mapping[k]) for k in keys if mapping.get(k) is not None)
        return cls(connection_name=connection_name, **kwargs)

    def __repr__(self):
        return "AmqpSettings(url=%r, cert_file=%r)" % (redact_url(self.url), self.cert_file)

    @property
    def display_url(self):
        return redact_url(self.url)

    def validate(self):
        """Check the settings without touching the network; raise AmqpError naming the fix."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("amqp", "amqps"):
            raise AmqpError("AMQP URL %s: the scheme must be amqp or amqps, not %r"
                            % (self.display_url, parts.scheme))
        if not parts.hostname:
            raise AmqpError("AMQP URL %s names no host" % self.display_url)
        try:
            parts.port
        except ValueError:
            raise AmqpError("AMQP URL %s has an invalid port" % self.display_url)
        if bool(self.cert_file) != bool(self.key_file):
            raise TlsError("a client certificate needs both cert_file and key_file")
        for label in ("ca_file", "cert_file", "key_file", "password_file"):
            path = getattr(self, label)
            if path and not os.access(path, os.R_OK):
                raise (AmqpError if label == "password_file" else TlsError)(
                    "%s %s does not exist or is not readable" % (label, path))
        if (self.cert_file or self.ca_file) and parts.scheme != "amqps":
            raise TlsError("ca_file/cert_file are given but the URL %s is not amqps://"
                           % self.display_url)
        if parts.password is not None and self.password_file:
            raise AmqpError("give the password either in the URL or in password_file, not both")

    def ssl_context(self):
        """The TLS client context for amqps URLs, or None for plain amqp."""
        if urlsplit(self.url).scheme != "amqps":
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.check_hostname = bool(self.verify_hostname)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError("cannot load the TLS files (ca_file=%s, cert_file=%s, key_file=%s): %s"
                           % (self.ca_file, self.cert_file, self.key_file, exc))
        return context

    def _password(self, parts):
        if self.password_file:
            try:
                return files.read_secret(self.password_file, "broker password")
            except files.FileProblem as exc:
                raise AmqpError(str(exc)) from None
        return unquote(parts.password) if parts.password is not None else None

    def parameters(self):
        """``pika.ConnectionParameters`` for these settings (validated first)."""
        if not HAS_PIKA:
            raise AmqpError("the Python library pika is required: pip install pika")
        self.validate()
        parts = urlsplit(self.url)
        tls = self.ssl_context()
        port = parts.port or (5671 if tls else 5672)
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        if parts.username:
            credentials = pika.PlainCredentials(unquote(parts.username), self._password(parts) or "")
        elif self.cert_file:
            credentials = pika.credentials.ExternalCredentials()
        else:
            credentials = pika.PlainCredentials("guest", "guest")
        properties = {"connection_name": self.connection_name or "testfleet"}
        return pika.ConnectionParameters(
            host=parts.hostname, port=port, virtual_host=vhost, credentials=credentials,
            ssl_options=pika.SSLOptions(tls, parts.hostname) if tls else None,
            heartbeat=self.heartbeat, socket_timeout=self.connect_timeout,
            stack_timeout=self.connect_timeout * 2, blocked_connection_timeout=300,
            connection_attempts=1, client_properties=properties)


def _root_causes(exc):
    """Flatten pika's nested connection-workflow errors into their underlying exceptions."""
    seen, stack, found = set(), [exc], []
    while stack:
        current = stack.pop()
        if id(current) in seen or current is None:
            continue
        seen.add(id(current))
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        for attr in ("exceptions", "exception", "error"):
            value = getattr(current, attr, None)
            if isinstance(value, BaseException):
                nested.append(value)
            elif isinstance(value, (list, tuple)):
                nested.extend(v for v in value if isinstance(v, BaseException))
        if current.__cause__ is not None:
            nested.append(current.__cause__)
        stack.extend(nested)
        found.append(current)
    return found


def describe_connection_error(settings, exc):
    """Turn a pika connection exception into an AmqpError subclass with a fix-it message."""
    where = settings.display_url
    causes = _root_causes(exc)
    for cause in causes:
        if HAS_PIKA and isinstance(cause, (pika.exceptions.ProbableAuthenticationError,
                                           pika.exceptions.AuthenticationError)):
            who = "the client certificate" if settings.cert_file else "the user and password"
            return AuthenticationFailed("the broker at %s refused %s (check the user, its "
                                        "password or certificate subject, and its permissions)"
                                        % (where, who))
        if HAS_PIKA and isinstance(cause, pika.exceptions.ProbableAccessDeniedError):
            return AuthenticationFailed("the broker at %s denied access to the vhost (it does "
                                        "not exist or the user has no permission on it)" % where)
        if HAS_PIKA and isinstance(cause, pika.exceptions.ConnectionClosedByBroker):
            if cause.reply_code in (403, 530):
                return AuthenticationFailed("the broker at %s refused the connection: %s"
                                            % (where, cause.reply_text))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TlsError("TLS: the broker's certificate at %s was not accepted (%s); check "
                            "ca_file and that the URL's host name is in the certificate"
                            % (where, cause.verify_message or cause))
        if isinstance(cause, ssl.SSLError):
            return TlsError("TLS handshake with %s failed (%s); check the client certificate, "
                            "key and ca_file" % (where, cause.reason or cause))
    for cause in causes:
        if isinstance(cause, (ConnectionError, OSError)) and not isinstance(cause, ssl.SSLError):
            return BrokerUnreachable("cannot reach the broker at %s: %s" % (where, cause))
    detail = causes[-1] if causes else exc
    text = str(detail) or type(detail).__name__
    if "EOF" in text or "StreamLost" in type(detail).__name__:
        return BrokerUnreachable("the broker at %s closed the connection during the handshake "
                                 "(a TLS or authentication refusal is the usual cause): %s"
                                 % (where, text))
    return BrokerUnreachable("cannot connect to the broker at %s: %s" % (where, text))


def connect(settings, attempts=1, retry_delay=2.0):
    """Open a ``pika.BlockingConnection``; raise an AmqpError subclass with a clear message.

    With ``attempts`` > 1, unreachable brokers are retried with ``retry_delay`` seconds between
    attempts (doubling, at most 30 s); refused credentials and TLS errors are not retried.
    """
    parameters = settings.parameters()
    delay = retry_delay
    for attempt in range(1, attempts + 1):
        try:
            return pika.BlockingConnection(parameters)
        except pika.exceptions.AMQPError as exc:
            error = describe_connection_error(settings, exc)
        except OSError as exc:
            error = describe_connection_error(settings, exc)
        if not isinstance(error, BrokerUnreachable) or attempt == attempts:
            raise error
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")  # pragma: no cover


class ConfirmedPublisher:
    """Publishes persistent messages on one channel with publisher confirms.

    ``publish`` returns only after the broker confirmed the message; a nack, an unroutable
    message (no queue bound to the routing key) or a closed channel raises PublishRefused.
    """

    def __init__(self, connection):
        self.connection = connection
        self.channel = connection.channel()
        self.channel.confirm_delivery()

    def publish(self, exchange, routing_key, body, message_id=None, headers=None,
                content_type="application/json"):
        properties = pika.BasicProperties(
            # 2 = persistent (pika.DeliveryMode is missing in Debian 12's python3-pika 1.2)
            delivery_mode=2, content_type=content_type,
            message_id=message_id, headers=headers, timestamp=int(time.time()))
        where = "exchange %r with routing key %r" % (exchange or "(default)", routing_key)
        try:
            self.channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            raise PublishRefused("no queue is bound to %s: the message was returned, not stored"
                                 " (apply the topology with testfleet.infra.amqp_topology)" % where)
        except pika.exceptions.NackError:
            raise PublishRefused("the broker refused (nack) a message to %s" % where)
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise PublishRefused("the broker closed the channel publishing to %s: %s %s"
                                 % (where, exc.reply_code, exc.reply_text))
        except pika.exceptions.AMQPConnectionError as exc:
            raise PublishRefused("the connection was lost publishing to %s before the broker "
                                 "confirmed it: %s" % (where, exc.__class__.__name__))

    def close(self):
        if self.connection.is_open:
            self.connection.close()


def plain(value):
    """An AMQP header value as JSON data: pika's bytes, datetimes and int subclasses made plain."""
    if isinstance(value, dict):
        return dict((str(plain(k)), plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return int(value)
    return str(value)
