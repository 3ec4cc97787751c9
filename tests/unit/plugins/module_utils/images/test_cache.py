"""The worker's image cache: verification, the sidecar, resumed downloads, the lock."""

import json
import os
import stat
import threading
import time

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming
from ansible_collections.testfleet.infra.plugins.module_utils.images.cache import CacheBusy, ImageCache, ProgressLog


class CountingStore(images.DirectoryStore):
    """A directory store that records its reads (offset, bytes handed out) and can be slow or
    break a read after some bytes (what a dropped connection does)."""

    def __init__(self, root):
        super().__init__(root)
        self.reads = []
        self.delay = 0.0
        self.break_after = None
        self.lock = threading.Lock()

    @property
    def bytes_read(self):
        return sum(count for dummy, count in self.reads)

    def read(self, file_name, offset=0):
        download = super().read(file_name, offset)
        with self.lock:
            index = len(self.reads)
            self.reads.append((download.offset, 0))
            break_after, self.break_after = self.break_after, None
        inner = download.chunks()

        def chunks():
            for chunk in inner:
                if break_after is not None and self.reads[index][1] + len(chunk) > break_after:
                    keep = break_after - self.reads[index][1]
                    if keep > 0:
                        self._count(index, keep)
                        yield chunk[:keep]
                    raise ConnectionResetError("connection reset by the test")
                if self.delay:
                    time.sleep(self.delay)
                self._count(index, len(chunk))
                yield chunk
        return images.Download(download.offset, download.total, chunks(), download.close)

    def _count(self, index, count):
        with self.lock:
            offset, done = self.reads[index]
            self.reads[index] = (offset, done + count)


@pytest.fixture
def published(tmp_path, make_image):
    image = make_image(size=1024 * 1024 + 123)
    store = CountingStore(str(tmp_path / "store"))
    images.publish_image(store, image.path)
    return image, store


def test_fetch_downloads_verifies_and_then_trusts_the_sidecar(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    result = cache.fetch(store, image.ref)
    assert result["changed"] is True and result["verified"] == "download"
    assert (result["downloaded_bytes"], result["resumed_from"], result["size"]) == (image.size, 0, image.size)
    path = tmp_path / "cache" / image.ref.image_file
    assert result["path"] == str(path) and path.read_bytes() == image.data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert result["manifest"] == image.manifest
    assert image_naming.parse_manifest((tmp_path / "cache" / image.ref.manifest_file).read_bytes()) == image.manifest
    assert not os.path.exists(cache.partial_path(image.ref))
    sidecar = json.loads(open(cache.sidecar_path(image.ref)).read())
    assert sidecar["sha256"] == image.sha256 and sidecar["size"] == image.size

    store.reads.clear()
    again = cache.fetch(store, image.ref)
    assert again["changed"] is False and again["verified"] == "sidecar" and again["downloaded_bytes"] == 0
    assert store.reads == []  # a cached image needs no store
    assert json.loads(open(cache.sidecar_path(image.ref)).read())["used_at"] >= sidecar["used_at"]
    assert cache.fetch(store, image.ref, verify="full")["verified"] == "hash"


def test_a_corrupt_cached_file_is_replaced(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    path = cache.fetch(store, image.ref)["path"]
    before = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(5000)
        handle.write(b"\0" * 100)
    # even with the mtime put back, the ctime changed: the sidecar does not vouch for it
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    store.reads.clear()
    result = cache.fetch(store, image.ref)
    assert result["replaced_corrupt"] is True and result["changed"] is True and result["verified"] == "download"
    assert open(path, "rb").read() == image.data and store.bytes_read == image.size


def test_a_truncated_cached_file_is_replaced(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    path = cache.fetch(store, image.ref)["path"]
    os.truncate(path, 1000)
    result = cache.fetch(store, image.ref)
    assert result["replaced_corrupt"] is True and open(path, "rb").read() == image.data


def test_a_cached_file_without_sidecar_is_hashed_once(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    cache.fetch(store, image.ref)
    os.unlink(cache.sidecar_path(image.ref))
    assert cache.fetch(store, image.ref)["verified"] == "hash"
    assert cache.fetch(store, image.ref)["verified"] == "sidecar"


def test_a_partial_download_is_resumed_from_its_size(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    cache.prepare()
    kept = 400 * 1024
    with open(cache.partial_path(image.ref), "wb") as handle:
        handle.write(image.data[:kept])
    result = cache.fetch(store, image.ref)
    assert (result["resumed_from"], result["downloaded_bytes"]) == (kept, image.size - kept)
    assert store.reads == [(kept, image.size - kept)]  # one ranged read of what was missing
    assert open(result["path"], "rb").read() == image.data


def test_a_broken_transfer_is_resumed_in_the_same_fetch(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    store.break_after = 300 * 1024
    result = cache.fetch(store, image.ref, retries=2, sleep=lambda seconds: None)
    assert store.reads == [(0, 300 * 1024), (300 * 1024, image.size - 300 * 1024)]
    assert result["downloaded_bytes"] == image.size and open(result["path"], "rb").read() == image.data


def test_without_retries_the_partial_file_stays_for_the_next_fetch(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    store.break_after = 256 * 1024
    with pytest.raises(images.ImageStoreError, match="failed 1 times.*ConnectionResetError.*is kept and resumed"):
        cache.fetch(store, image.ref, retries=0)
    assert os.path.getsize(cache.partial_path(image.ref)) == 256 * 1024
    assert not os.path.exists(cache.image_path(image.ref))
    result = cache.fetch(store, image.ref)
    assert result["resumed_from"] == 256 * 1024 and store.reads[-1] == (256 * 1024, image.size - 256 * 1024)


def test_a_corrupt_partial_download_is_fetched_again_from_scratch(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    cache.prepare()
    with open(cache.partial_path(image.ref), "wb") as handle:
        handle.write(b"\xff" * 1000 + image.data[1000:5000])
    result = cache.fetch(store, image.ref)
    assert store.reads == [(5000, image.size - 5000), (0, image.size)]
    assert result["downloaded_bytes"] == 2 * image.size - 5000 and result["resumed_from"] == 0
    assert open(result["path"], "rb").read() == image.data


def test_a_corrupt_stored_image_is_never_returned(tmp_path, published):
    image, store = published
    stored = tmp_path / "store" / image.ref.image_file
    data = bytearray(stored.read_bytes())
    data[12345] ^= 0xFF
    stored.write_bytes(bytes(data))
    cache = ImageCache(str(tmp_path / "cache"))
    with pytest.raises(images.IntegrityError, match="the stored image is corrupt; nothing was kept"):
        cache.fetch(store, image.ref)
    assert not os.path.exists(cache.image_path(image.ref)) and not os.path.exists(cache.partial_path(image.ref))


def test_an_unpublished_image_is_not_fetched(tmp_path, published):
    image, store = published
    os.unlink(tmp_path / "store" / image.ref.manifest_file)
    cache = ImageCache(str(tmp_path / "cache"))
    with pytest.raises(images.ImageNotFound, match="is not published"):
        cache.fetch(store, image.ref)
    assert store.reads == [] and os.listdir(cache.root) == [".state"]


def test_parallel_fetches_download_once(tmp_path, published):
    image, store = published
    store.delay = 0.02  # about 0.3 s for the whole image
    cache_dir = str(tmp_path / "cache")
    results, errors = [], []

    def fetch():
        try:
            results.append(ImageCache(cache_dir).fetch(store, image.ref))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
    threads = [threading.Thread(target=fetch) for dummy in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and len(results) == 4
    assert len(store.reads) == 1 and store.bytes_read == image.size
    downloaded = [r for r in results if r["downloaded_bytes"]]
    waited = [r for r in results if not r["downloaded_bytes"]]
    assert len(downloaded) == 1 and len(waited) == 3
    assert all(r["changed"] is False and r["verified"] == "sidecar" and r["lock_wait"] > 0.1 for r in waited)


def test_lock_timeout_and_a_lock_file_removed_while_waiting(tmp_path):
    cache = ImageCache(str(tmp_path / "cache"))
    cache.prepare()
    ref = image_naming.ImageRef("debian-12", "ab" * 32)
    with cache.lock(ref):
        with pytest.raises(CacheBusy, match="locked by another fetch or prune"):
            with ImageCache(cache.root).lock(ref, timeout=0):
                pass
    # A waiter whose lock file is removed (by a prune) while it waits locks the new file instead.
    held = threading.Event()
    release = threading.Event()
    order = []

    def prune():
        with cache.lock(ref):
            held.set()
            release.wait(10)
            os.unlink(cache.lock_path(ref))
            order.append("pruned")

    pruner = threading.Thread(target=prune)
    pruner.start()
    held.wait(10)
    waiter_done = []

    def wait():
        with cache.lock(ref, timeout=10):
            order.append("waiter")
            assert os.path.exists(cache.lock_path(ref))
            waiter_done.append(os.stat(cache.lock_path(ref)).st_ino)
    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.1)
    release.set()
    pruner.join(10)
    waiter.join(10)
    assert order == ["pruned", "waiter"] and waiter_done


def test_progress_log_lines(tmp_path):
    clock = iter([0.0, 0.5, 11.0, 12.0, 30.0]).__next__
    log = ProgressLog(str(tmp_path / "fetch.log"), "debian-12-abc.qcow2", interval=10.0, clock=clock)
    log("downloading", 0, 100 * images.MIB)
    log("downloading", 10 * images.MIB, 100 * images.MIB)   # 0.5 s: too soon
    log("downloading", 50 * images.MIB, 100 * images.MIB)   # 11 s
    log("downloading", 60 * images.MIB, 100 * images.MIB)   # 12 s: too soon
    log("downloading", 100 * images.MIB, 100 * images.MIB)  # done: always written
    lines = (tmp_path / "fetch.log").read_text().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("debian-12-abc.qcow2: downloading 100.0 MiB")
    assert "downloading 50.0 MiB of 100.0 MiB (50%), 4.5 MiB/s, about 11 s left" in lines[1]
    assert "downloading 100.0 MiB of 100.0 MiB (100%)" in lines[2]
    log.note("resuming after ConnectionResetError:\n" + "\u00e9" * 1000)
    last = (tmp_path / "fetch.log").read_bytes().splitlines()[-1]
    assert len(last) <= 500 and last.endswith(b"...") and b"ConnectionResetError: \xc3\xa9" in last


def test_check_mode_writes_nothing(tmp_path, published):
    image, store = published
    cache = ImageCache(str(tmp_path / "cache"))
    result = cache.fetch(store, image.ref, check_mode=True)
    assert result["changed"] is True and result["manifest"] == image.manifest
    assert not os.path.exists(cache.root) and store.reads == []
    cache.fetch(store, image.ref)
    assert cache.fetch(store, image.ref, check_mode=True)["changed"] is False
