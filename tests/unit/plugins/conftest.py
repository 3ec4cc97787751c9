"""Fixtures of the image store and cache tests: fake images, an S3 bucket, a TCP proxy.

``make_image(name, size)`` writes a fake image (random bytes, no VM needed) named as vm_image
names them, with its manifest, into ``tmp_path/build``. ``s3`` is a bucket on a real
moto_server (the fixture ``moto_server`` of tests/conftest.py) with the module options to reach
it. ``tcp_proxy(endpoint)`` puts a :class:`CountingProxy` in front of a server: it counts the
bytes that go through it, can slow them down, and can cut the connections after some bytes.
``module_process(name, args)`` runs a module of this collection as its own process.

The scanner's tests (``modules/test_scan.py`` through the real broker, ``module_utils/scan/
test_scanner.py`` without one) share ``testmap`` (the test map of ``org/proj``, on the queues of
the test file's own ``broker`` fixture) and ``github`` (the fake GitHub with ``org/proj``, a
writer ``maint`` and a reader ``rita``).
"""

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import types
from urllib.parse import urlsplit

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

S3_ACCESS_KEY = "testfleet-test"
S3_SECRET = "moto-secret-do-not-print-0123456789"


@pytest.fixture
def make_image(tmp_path):
    def make(name="debian-12", size=300 * 1024, folder=None, data=None):
        data = os.urandom(size) if data is None else data
        sha = hashlib.sha256(data).hexdigest()
        folder = folder or (tmp_path / "build")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / image_naming.image_file_name(name, sha)
        path.write_bytes(data)
        manifest = image_naming.make_manifest(name, sha, len(data), recipe_sha256="ab" * 32,
                                              base={"kind": "debootstrap", "suite": "bookworm"},
                                              packages=["linux-image-amd64", "openssh-server"])
        manifest_path = folder / image_naming.manifest_file_name(name, sha)
        manifest_path.write_bytes(image_naming.manifest_bytes(manifest))
        return types.SimpleNamespace(path=str(path), manifest_path=str(manifest_path), name=name, sha256=sha,
                                     size=len(data), data=data, ref=image_naming.ImageRef(name, sha), manifest=manifest)
    return make


@pytest.fixture
def s3(moto_server, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                          aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET)
    bucket = "testfleet-images"
    client.create_bucket(Bucket=bucket)
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(S3_SECRET + "\n")

    def options(endpoint=None, prefix="images"):
        return {"store_url": "s3://%s/%s" % (bucket, prefix), "endpoint_url": endpoint or moto_server,
                "access_key": S3_ACCESS_KEY, "secret_key_file": str(secret_file)}

    def store(endpoint=None, prefix="images", **kwargs):
        return images.open_store("s3://%s/%s" % (bucket, prefix), endpoint_url=endpoint or moto_server,
                                 access_key=S3_ACCESS_KEY, secret_key=S3_SECRET, **kwargs)

    def keys(prefix=""):
        return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", ()))

    def pending_uploads():
        return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    return types.SimpleNamespace(endpoint=moto_server, client=client, bucket=bucket, options=options, store=store,
                                 keys=keys, pending_uploads=pending_uploads, secret=S3_SECRET)


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts the bytes it passes each way.

    ``delay`` seconds of sleep per chunk (at most ``chunk`` bytes) from the server slow
    downloads down; ``cut_after`` (bytes from the server, counted from when it is set) drops
    every connection once that many bytes went through (the server's answer is cut short).
    """

    def __init__(self, endpoint, chunk=16384):
        parts = urlsplit(endpoint)
        self.target = (parts.hostname, parts.port)
        self.chunk = chunk
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sockets = []
        self.downstream = 0
        self.upstream = 0
        self.connections = 0
        self.delay = 0.0
        self._cut_at = None
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        with self.lock:
            self.downstream = self.upstream = 0

    def cut_after(self, count):
        with self.lock:
            self._cut_at = self.downstream + count

    def _accept(self):
        while True:
            try:
                client, dummy = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            with self.lock:
                self.connections += 1
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source, sink, from_server):
        try:
            while True:
                data = source.recv(self.chunk)
                if not data:
                    break
                cut = False
                with self.lock:
                    if from_server:
                        if self._cut_at is not None and self.downstream + len(data) >= self._cut_at:
                            data = data[:max(0, self._cut_at - self.downstream)]
                            self._cut_at = None
                            cut = True
                        self.downstream += len(data)
                    else:
                        self.upstream += len(data)
                if from_server and self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
                if cut:
                    self.drop()
                    break
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def drop(self):
        """Close every connection (what a client sees when the network breaks)."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def stop(self):
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.drop()


@pytest.fixture
def tcp_proxy():
    started = []

    def start(endpoint):
        proxy = CountingProxy(endpoint)
        started.append(proxy)
        return proxy
    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def module_process(collections_path, tmp_path):
    """``module_process(name, args)``: a Popen of the module run by Python as its own process
    (stdout: the module's JSON result). ``.result()`` waits and decodes it."""
    started = []

    def start(name, args):
        args_file = tmp_path / ("module-args-%d.json" % len(started))
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_module_name=name)}))
        env = dict(os.environ, PYTHONPATH=collections_path)
        proc = subprocess.Popen([sys.executable, "-m", "ansible_collections.testfleet.infra.plugins.modules." + name,
                                 str(args_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

        def result(timeout=120):
            out, err = proc.communicate(timeout=timeout)
            try:
                return json.loads(out)
            except ValueError:
                raise AssertionError("module %s printed no JSON (exit %s): %s %s" % (name, proc.returncode, out, err))
        proc.result = result
        started.append(proc)
        return proc
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


SCAN_REPO = "org/proj"


@pytest.fixture
def testmap(tmp_path, broker):
    path = tmp_path / "testmap.yml"
    path.write_text("""\
defaults: {queue: %(public)s, timeout: 600, queued_timeout: 3600}
allow: {authors: [alice], associations: [OWNER, MEMBER]}
repos:
  org/proj:
    branches:
      main:
        - ctx/a
        - {context: ctx/b, queue: %(internal)s, timeout: 900, args: {command: [make, check]}}
    manual: [ctx/m]
""" % {"public": broker.public, "internal": broker.internal})
    return str(path)


@pytest.fixture
def github(fake_github):
    fake_github.add_repo(SCAN_REPO)
    fake_github.set_permission(SCAN_REPO, "maint", "write")
    fake_github.set_permission(SCAN_REPO, "rita", "read")
    return fake_github
