import datetime
import ipaddress
import socket
import ssl
import threading
import time

import pika
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.testfleet.infra.plugins.module_utils.amqp import (
    AmqpError, AmqpSettings, BrokerUnreachable, TlsError, connect, redact_url)

SECRET = "s3cr%40t-Value"  # percent-encoded '@' inside: "s3cr@t-Value" once decoded
PLAIN_SECRET = "s3cr@t-Value"


def assert_no_secret(text):
    assert SECRET not in text and PLAIN_SECRET not in text


@pytest.mark.parametrize("url,shown", [
    ("amqp://user:%s@host:5672/vh" % SECRET, "amqp://user:********@host:5672/vh"),
    ("amqps://user:%s@host/" % SECRET, "amqps://user:********@host/"),
    ("amqp://user@host/", "amqp://user@host/"),
    ("amqp://host:5672/", "amqp://host:5672/"),
    ("amqp://user:%s@[::1]:5672/" % SECRET, "amqp://user:********@[::1]:5672/"),
    ("amqp://:%s@host/" % SECRET, "amqp://:********@host/"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_repr_and_display_url_hide_the_password():
    settings = AmqpSettings("amqp://user:%s@host/" % SECRET)
    assert_no_secret(repr(settings))
    assert_no_secret(settings.display_url)
    assert "user" in repr(settings)


@pytest.mark.parametrize("url,problem", [
    ("http://user:%s@host/" % SECRET, "the scheme must be amqp or amqps"),
    ("amqp://user:%s@/vhost" % SECRET, "names no host"),
    ("amqp://user:%s@host:99999/" % SECRET, "has an invalid port"),
    ("amqp://user:%s@host:port/" % SECRET, "has an invalid port"),
])
def test_url_validation_names_the_problem_without_the_password(url, problem):
    with pytest.raises(AmqpError) as info:
        AmqpSettings(url).validate()
    assert problem in str(info.value)
    assert_no_secret(str(info.value))
    assert "user:********@" in str(info.value)


def test_a_certificate_needs_its_key(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(TlsError, match="needs both cert_file and key_file"):
        AmqpSettings("amqps://host/", cert_file=str(cert)).validate()


@pytest.mark.parametrize("label,error", [
    ("ca_file", TlsError), ("cert_file", TlsError), ("key_file", TlsError),
    ("password_file", AmqpError),
])
def test_missing_files_are_named(tmp_path, label, error):
    present = tmp_path / "present.pem"
    present.write_text("x")
    files = {"cert_file": str(present), "key_file": str(present)} if label in ("cert_file", "key_file") else {}
    files[label] = str(tmp_path / "absent")
    url = "amqp://user@host/" if label == "password_file" else "amqps://host/"
    with pytest.raises(error) as info:
        AmqpSettings(url, **files).validate()
    assert isinstance(info.value, TlsError) == (error is TlsError)
    assert "%s %s does not exist or is not readable" % (label, tmp_path / "absent") in str(info.value)


def test_tls_files_need_an_amqps_url(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(TlsError, match="is not amqps://"):
        AmqpSettings("amqp://host/", ca_file=str(ca)).validate()


def test_password_in_url_and_file_is_refused(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(PLAIN_SECRET)
    with pytest.raises(AmqpError, match="not both") as info:
        AmqpSettings("amqp://user:%s@host/" % SECRET, password_file=str(password_file)).validate()
    assert_no_secret(str(info.value))


def test_unusable_tls_files_are_reported(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(TlsError, match="cannot load the TLS files"):
        AmqpSettings("amqps://host/", ca_file=str(bad)).ssl_context()


@pytest.mark.parametrize("url,host,port,vhost", [
    ("amqp://h/", "h", 5672, "/"),
    ("amqp://h", "h", 5672, "/"),
    ("amqp://h:1234/%2F", "h", 1234, "/"),
    ("amqp://h/testfleet", "h", 5672, "testfleet"),
    ("amqps://h/a%2Fb", "h", 5671, "a/b"),
])
def test_parameters_host_port_vhost(url, host, port, vhost):
    parameters = AmqpSettings(url).parameters()
    assert (parameters.host, parameters.port, parameters.virtual_host) == (host, port, vhost)
    assert (parameters.ssl_options is not None) == url.startswith("amqps")


def test_credentials_from_the_url_are_percent_decoded():
    credentials = AmqpSettings("amqp://us%2Fer:" + SECRET + "@h/").parameters().credentials
    assert (credentials.username, credentials.password) == ("us/er", PLAIN_SECRET)


def test_credentials_from_a_password_file(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(PLAIN_SECRET + "\n")
    credentials = AmqpSettings("amqp://worker@h/", password_file=str(password_file)).parameters().credentials
    assert (credentials.username, credentials.password) == ("worker", PLAIN_SECRET)


def test_a_client_certificate_without_user_means_external_auth(tls_files):
    settings = AmqpSettings("amqps://localhost/", ca_file=tls_files["cert"],
                            cert_file=tls_files["cert"], key_file=tls_files["key"])
    assert isinstance(settings.parameters().credentials, pika.credentials.ExternalCredentials)


def test_no_user_means_guest():
    credentials = AmqpSettings("amqp://h/").parameters().credentials
    assert (credentials.username, credentials.password) == ("guest", "guest")


# Error mapping, against real sockets on 127.0.0.1.

@pytest.fixture
def closed_port():
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server():
    """Start a one-connection TCP server running ``handler(conn)``; return its port."""
    threads, sockets = [], []

    def start(handler):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sockets.append(listener)

        def serve():
            conn = listener.accept()[0]
            with conn:
                handler(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return listener.getsockname()[1]

    yield start
    for thread in threads:
        thread.join(10)
    for listener in sockets:
        listener.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    paths = {"cert": str(directory / "cert.pem"), "key": str(directory / "key.pem")}
    with open(paths["cert"], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


def tls_server_handler(tls_files, after_handshake):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])

    def handler(conn):
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                after_handshake(tls)
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate

    return handler


def connect_error(url, **settings):
    with pytest.raises(AmqpError) as info:
        connect(AmqpSettings(url, connect_timeout=5, **settings))
    assert_no_secret(str(info.value))
    return info.value


def test_a_closed_port_is_unreachable(closed_port):
    error = connect_error("amqp://user:%s@127.0.0.1:%d/" % (SECRET, closed_port))
    assert isinstance(error, BrokerUnreachable)
    assert "cannot reach the broker at amqp://user:********@127.0.0.1:%d/" % closed_port in str(error)


def test_unreachable_is_retried_with_a_delay(closed_port):
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable):
        connect(AmqpSettings("amqp://127.0.0.1:%d/" % closed_port), attempts=3, retry_delay=0.2)
    assert time.monotonic() - started >= 0.2 + 0.4


def test_a_server_closing_during_the_handshake(server):
    port = server(lambda conn: conn.recv(8))
    error = connect_error("amqp://user:%s@127.0.0.1:%d/" % (SECRET, port))
    assert isinstance(error, BrokerUnreachable)
    assert "127.0.0.1:%d" % port in str(error)


def test_tls_to_a_plain_server_is_a_tls_error(server):
    def plain_amqp(conn):
        conn.recv(1024)
        conn.sendall(b"AMQP\x00\x00\x09\x01" * 8)

    port = server(plain_amqp)
    error = connect_error("amqps://user:%s@127.0.0.1:%d/" % (SECRET, port))
    assert isinstance(error, TlsError)
    assert "TLS handshake with amqps://user:********@127.0.0.1:%d/ failed" % port in str(error)


def test_an_untrusted_certificate_is_a_tls_error(server, tls_files):
    port = server(tls_server_handler(tls_files, lambda tls: None))
    error = connect_error("amqps://127.0.0.1:%d/" % port)
    assert isinstance(error, TlsError)
    assert "certificate" in str(error) and "ca_file" in str(error)


def test_the_ca_file_makes_the_certificate_trusted(server, tls_files):
    port = server(tls_server_handler(tls_files, lambda tls: tls.recv(8)))
    error = connect_error("amqps://localhost:%d/" % port, ca_file=tls_files["cert"])
    assert isinstance(error, BrokerUnreachable)  # TLS passed; the fake broker then hung up
