"""The log store library: backends, spool, shipper (retries, backoff, breaker), redaction."""

import json
import threading
import time

import pytest

from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore


class FlakyStore(logstore.LocalStore):
    """A local store that fails while ``broken`` is set, and can be slow."""

    def __init__(self, root, supports_append=True):
        super().__init__(root)
        self.supports_append = supports_append
        self.broken = False
        self.delay = 0.0
        self.calls = []

    def _maybe_fail(self, what):
        self.calls.append((what, time.monotonic()))
        if self.delay:
            time.sleep(self.delay)
        if self.broken:
            raise logstore.LogStoreError("store down (%s)" % what)

    def put(self, job_id, name, data):
        self._maybe_fail("put " + name)
        super().put(job_id, name, data)

    def write_at(self, job_id, name, offset, data):
        self._maybe_fail("append " + name)
        super().write_at(job_id, name, offset, data)


def test_open_store_backends(tmp_path):
    store = logstore.open_store("file://%s" % tmp_path)
    assert isinstance(store, logstore.LocalStore) and store.root == str(tmp_path)
    assert isinstance(logstore.open_store(str(tmp_path)), logstore.LocalStore)
    s3 = logstore.open_store("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:1", public_url="https://logs.example/x/")
    assert isinstance(s3, logstore.S3Store)
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3._key("job-1", "log") == "some/prefix/job-1/log"
    assert s3.location("job-1", "log.html") == "https://logs.example/x/job-1/log.html"
    with pytest.raises(logstore.LogStoreError, match="file:// or s3://"):
        logstore.open_store("http://example.org/logs")
    with pytest.raises(logstore.LogStoreError, match="names no bucket"):
        logstore.open_store("s3:///prefix")


def test_s3_store_against_moto(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = logstore.open_store("s3://ci-logs/logs/", endpoint_url=moto_server, region="us-east-1",
                                public_url="https://logs.example/logs")
    # the shipper retries and has a deadline: the client never retries by itself, and gives up soon
    config = store.client.meta.config
    assert (config.retries["total_max_attempts"], config.connect_timeout, config.read_timeout) == (1, 5.0, 15.0)
    with pytest.raises(logstore.LogStoreError, match=r"^S3 upload of s3://ci-logs/logs/job-1/log failed: NoSuchBucket"):
        store.put("job-1", "log", b"x")
    store.client.create_bucket(Bucket="ci-logs")
    store.put("job-1", "log", b"line 1\n")
    store.put("job-1", "attachments/a b.txt", b"a")
    head = store.client.head_object(Bucket="ci-logs", Key="logs/job-1/log")
    assert (head["ContentType"], head["CacheControl"]) == ("text/plain; charset=utf-8", "no-store")
    head = store.client.head_object(Bucket="ci-logs", Key="logs/job-1/attachments/a b.txt")
    assert head["ContentType"] == "application/octet-stream" and "CacheControl" not in head
    assert store.get("job-1", "log") == b"line 1\n" and store.get("job-1", "result.json") is None
    assert store.list("job-1") == ["attachments/a b.txt", "log"] and store.list("job-2") == []
    assert store.location("job-1", "attachments/a b.txt") == "https://logs.example/logs/job-1/attachments/a%20b.txt"
    private = logstore.S3Store("ci-logs", "logs", client=store.client)
    assert (private.location("job-1", "log.html"), private.location("job-1")) == (
        "s3://ci-logs/logs/job-1/log.html", "s3://ci-logs/logs/job-1/")


def test_local_store_put_append_get_list(tmp_path):
    store = logstore.LocalStore(str(tmp_path), public_url="https://logs.example/logs")
    store.put("job-1", "result.json", b"{}")
    store.write_at("job-1", "log", 0, b"hello ")
    store.write_at("job-1", "log", 6, b"world\n")
    store.put("job-1", "attachments/a/b.txt", b"x")
    assert store.get("job-1", "log") == b"hello world\n"
    assert store.get("job-1", "missing") is None
    assert store.list("job-1") == ["attachments/a/b.txt", "log", "result.json"]
    assert store.location("job-1", "log.html") == "https://logs.example/logs/job-1/log.html"
    # an append past the end (the stored log was replaced) asks for a whole upload
    with pytest.raises(logstore.ShortFile):
        store.write_at("job-1", "log", 100, b"more")
    # rewriting from an earlier offset cuts what followed (a rerun of the job)
    store.write_at("job-1", "log", 0, b"new")
    assert store.get("job-1", "log") == b"new"


@pytest.mark.parametrize("job_id, name", [("../etc", "log"), ("job", "../x"), ("job", "/abs"), ("job", "a//b"), ("", "log")])
def test_names_cannot_escape_the_folder(tmp_path, job_id, name):
    with pytest.raises(logstore.LogStoreError):
        logstore.LocalStore(str(tmp_path)).put(job_id, name, b"")


def test_redactor_text_data_binary():
    redactor = logstore.Redactor(["s3cr3t", 'quo"te', "s3cr3t-longer", None, "  "])
    assert redactor.text("a s3cr3t-longer and s3cr3t") == "a ******** and ********"
    # the JSON-escaped form of a secret is removed too
    assert redactor.text(json.dumps({"v": 'quo"te'})) == '{"v": "********"}'
    assert redactor.data({"k": ["s3cr3t", 1, {"s3cr3t": "x"}]}) == {"k": ["********", 1, {"********": "x"}]}
    assert redactor.binary(b"\x00s3cr3t\x01") == b"\x00******\x01"
    assert not logstore.Redactor([]) and logstore.Redactor([]).text("abc") == "abc"


def test_job_secrets_and_public_job():
    job = {"id": "j", "args": {"secrets": {"A": "one", "B": 2}, "env": {"C": "three"}}}
    assert sorted(logstore.job_secrets(job)) == ["2", "one"]
    shown = logstore.public_job(job)
    assert shown["args"] == {"secrets": {"A": "********", "B": "********"}, "env": {"C": "three"}}
    assert job["args"]["secrets"]["A"] == "one"  # not modified
    assert logstore.job_secrets({"id": "j"}) == []


def test_spool_caps_the_log(tmp_path):
    spool = logstore.JobSpool(str(tmp_path), "job-1", max_log_bytes=100)
    assert spool.append("x" * 60) == 60
    written = spool.append("y" * 60)
    assert 40 < written
    assert spool.append("z") == 0
    log = spool.read_log().decode()
    assert log.startswith("x" * 60 + "y" * 40) and "the log reached 100 bytes" in log


def test_spool_attachments_skip_links_and_limits(tmp_path):
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    attachments = tmp_path / "spool" / "job-1" / "attachments"
    (attachments / "d").mkdir()
    (attachments / "d" / "a.txt").write_text("aaa")
    (attachments / "b.bin").write_bytes(b"b" * 10)
    (attachments / "link").symlink_to("/etc/hostname")
    files, skipped = spool.attachments()
    assert [name for name, path in files] == ["attachments/b.bin", "attachments/d/a.txt"]
    assert skipped == ["attachments/link: not a regular file"]
    files, skipped = spool.attachments(max_bytes=5)
    assert [name for name, path in files] == ["attachments/d/a.txt"]
    assert "over the attachment limits" in skipped[0]


def test_shipper_appends_to_a_local_store_and_stores_files(tmp_path):
    store = FlakyStore(str(tmp_path / "store"))
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    shipper = logstore.Shipper(store, spool, interval=0.05, flush_bytes=10).start()
    shipper.put("result.json", b'{"outcome": "running"}')
    shipper.poke(spool.append("line one\n"))
    deadline = time.monotonic() + 5
    while store.get("job-1", "log") != b"line one\n" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.get("job-1", "log") == b"line one\n"
    shipper.poke(spool.append("line two\n"))
    shipper.put("result.json", b'{"outcome": "success"}')
    assert shipper.close(5) is True
    assert store.get("job-1", "log") == b"line one\nline two\n"
    assert store.get("job-1", "result.json") == b'{"outcome": "success"}'
    # the growing log is appended, not re-sent
    assert [what for what, when in store.calls if what.startswith("put log")] == []


def test_shipper_retries_with_backoff_then_the_breaker_opens(tmp_path):
    store = FlakyStore(str(tmp_path / "store"))
    store.broken = True
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    errors = []
    shipper = logstore.Shipper(store, spool, interval=0.01, backoff=0.05, max_backoff=0.2, breaker_after=4,
                               breaker_cooldown=30, on_error=errors.append).start()
    spool.append("a line\n")
    time.sleep(1.5)
    attempts = [when for what, when in store.calls]
    # backoff: 0.05, 0.1, 0.2 (+-20%), then the breaker stops the attempts
    assert len(attempts) == 4, attempts
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.035 and gaps[1] >= 0.075 and gaps[2] >= 0.15, gaps
    assert "store down" in errors[0] and shipper.failures == 4
    # the store comes back: the final flush stores everything
    store.broken = False
    assert shipper.close(5) is True
    assert store.get("job-1", "log") == b"a line\n"


def test_shipper_never_blocks_the_producer_and_close_gives_up(tmp_path):
    store = FlakyStore(str(tmp_path / "store"))
    store.delay = 3.0
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    shipper = logstore.Shipper(store, spool, interval=0.01, flush_bytes=1).start()
    started = time.monotonic()
    for dummy in range(200):
        shipper.poke(spool.append("output line\n"))
    assert time.monotonic() - started < 0.5
    # close while the shipper's thread is stuck in the slow store (on a loaded machine the
    # thread may not have begun its first upload yet)
    deadline = time.monotonic() + 10
    while not store.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.calls
    started = time.monotonic()
    assert shipper.close(0.5) is False
    assert time.monotonic() - started < 1.5
    assert spool.read_log().count(b"output line") == 200  # kept locally


def test_shipper_resends_a_whole_s3_log_less_often_as_it_grows(tmp_path, monkeypatch):
    store = FlakyStore(str(tmp_path / "store"), supports_append=False)
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    monkeypatch.setattr(logstore.spool, "S3_RESEND_BYTES_PER_S", 1000)
    shipper = logstore.Shipper(store, spool, interval=0.01)
    spool.append("x" * 5000)
    assert shipper.flush() is True and len(store.calls) == 1
    spool.append("more")
    shipper.flush()
    assert len(store.calls) == 1  # a 5 KB log at 1 KB/s: not before 5 s
    assert shipper.flush(force=True) is True
    assert store.get("job-1", "log") == b"x" * 5000 + b"more"


def test_upload_folder_stores_result_last_and_redacts_attachments(tmp_path):
    store = FlakyStore(str(tmp_path / "store"))
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    spool.append("the log\n")
    (tmp_path / "spool" / "job-1" / "attachments" / "a.txt").write_text("key=hunter22\n")
    ok, error = logstore.upload_folder(store, spool, {"outcome": "success"}, redactor=logstore.Redactor(["hunter22"]))
    assert (ok, error) == (True, None)
    assert [what for what, when in store.calls] == ["put log", "put log.html", "put attachments/a.txt", "put result.json"]
    assert store.get("job-1", "attachments/a.txt") == b"key=********\n"
    assert json.loads(store.get("job-1", "result.json")) == {"outcome": "success"}


def test_upload_folder_reports_a_final_failure(tmp_path):
    store = FlakyStore(str(tmp_path / "store"))
    store.broken = True
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    started = time.monotonic()
    ok, error = logstore.upload_folder(store, spool, {"outcome": "success"}, deadline=0.5, backoff=0.05)
    assert ok is False and "store down" in error
    assert time.monotonic() - started < 2
    assert len(store.calls) >= 3


def test_viewer_is_self_contained():
    html = logstore.viewer_html()
    assert "http://" not in html and "https://" not in html and "src=" not in html
    assert 'fetch("log"' in html and 'fetch("result.json"' in html and 'cache: "no-store"' in html


def test_shipper_thread_survives_exceptions(tmp_path):
    store = FlakyStore(str(tmp_path / "store"))
    spool = logstore.JobSpool(str(tmp_path / "spool"), "job-1")
    calls = []

    def tick():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")

    errors = []
    shipper = logstore.Shipper(store, spool, interval=0.01, tick=tick, on_error=errors.append).start()
    time.sleep(0.2)
    assert len(calls) > 2 and "RuntimeError: boom" in errors[0]
    assert threading.active_count() >= 1
    shipper.close(1)
