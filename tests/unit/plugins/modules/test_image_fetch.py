"""image_fetch against a real moto_server (S3) behind a TCP proxy that counts the bytes.

The proxy's count of the bytes that came from the server is what proves that a resumed
download read only what was missing, and that parallel fetches downloaded an image once.
"""

import json
import os
import signal
import stat
import time

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images

OVERHEAD = 16 * 1024  # HTTP headers of the few requests of a fetch, generously


@pytest.fixture
def s3_image(s3, make_image, tcp_proxy, tmp_path):
    """A 2 MiB image published to S3; ``args`` fetch it through ``proxy`` into ``cache``."""
    image = make_image(size=2 * images.MIB + 321)
    images.publish_image(s3.store(), image.path)
    proxy = tcp_proxy(s3.endpoint)
    cache = tmp_path / "cache"
    args = dict(s3.options(endpoint=proxy.url), name=image.name, sha256=image.sha256, cache_dir=str(cache))
    return image, proxy, cache, args


def partial_path(cache, image):
    return cache / ".state" / (image.ref.image_file + ".part")


def test_fetches_verifies_and_serves_the_cache(run_module, s3, s3_image):
    image, proxy, cache, args = s3_image
    result = run_module("image_fetch", args, diff=True)
    assert "failed" not in result, result
    path = cache / image.ref.image_file
    assert result["changed"] is True and result["path"] == str(path) and path.read_bytes() == image.data
    assert (result["downloaded_bytes"], result["resumed_from"], result["verified"]) == (image.size, 0, "download")
    assert result["manifest"] == image.manifest and result["manifest_path"] == str(cache / image.ref.manifest_file)
    assert result["diff"] == {"before": {"path": str(path), "state": "absent"},
                              "after": {"path": str(path), "state": "present", "sha256": image.sha256}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert image.size <= proxy.downstream < image.size + OVERHEAD

    proxy.reset()
    again = run_module("image_fetch", args)
    assert again["changed"] is False and again["downloaded_bytes"] == 0 and again["verified"] == "sidecar"
    assert proxy.downstream == 0 and proxy.upstream == 0  # the store was not contacted
    assert s3.secret not in json.dumps(result) + json.dumps(again)
    log = (cache / "fetch.log").read_text()
    assert "downloading" in log and "verified" in log


def test_a_broken_connection_is_resumed_from_the_partial_file(run_module, s3_image):
    image, proxy, cache, args = s3_image
    proxy.cut_after(900 * 1024)
    failed = run_module("image_fetch", dict(args, retries=0))
    assert failed["failed"] is True and "is kept and resumed next time" in failed["msg"]
    kept = os.path.getsize(partial_path(cache, image))
    assert 0 < kept < 900 * 1024 and not (cache / image.ref.image_file).exists()

    proxy.reset()
    result = run_module("image_fetch", args)
    assert result["changed"] is True and result["resumed_from"] == kept
    assert result["downloaded_bytes"] == image.size - kept
    # what came over the wire: the missing bytes only, not the whole image again
    assert image.size - kept <= proxy.downstream < image.size - kept + OVERHEAD
    assert (cache / image.ref.image_file).read_bytes() == image.data


def test_a_broken_connection_is_resumed_within_the_task(run_module, s3_image):
    image, proxy, cache, args = s3_image
    proxy.cut_after(700 * 1024)
    result = run_module("image_fetch", dict(args, retries=2))
    assert result["changed"] is True and result["downloaded_bytes"] == image.size, result
    assert image.size <= proxy.downstream < image.size + 2 * OVERHEAD
    assert (cache / image.ref.image_file).read_bytes() == image.data
    assert "resuming after" in (cache / "fetch.log").read_text()


def test_a_killed_fetch_is_resumed(run_module, module_process, s3_image):
    image, proxy, cache, args = s3_image
    proxy.delay = 0.01  # about 16 KiB per 10 ms: the download takes over a second
    proc = module_process("image_fetch", args)
    part = partial_path(cache, image)
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size >= 512 * 1024):
        assert proc.poll() is None and time.monotonic() < deadline, "the fetch ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proxy.delay = 0.0
    kept = part.stat().st_size
    assert kept < image.size and not (cache / image.ref.image_file).exists()

    proxy.reset()
    result = run_module("image_fetch", args)  # the killed process's lock went with it
    assert result["resumed_from"] == kept and result["downloaded_bytes"] == image.size - kept
    assert image.size - kept <= proxy.downstream < image.size - kept + OVERHEAD
    assert (cache / image.ref.image_file).read_bytes() == image.data


def test_parallel_fetches_on_one_host_download_once(module_process, s3_image):
    image, proxy, cache, args = s3_image
    proxy.delay = 0.01  # the download takes over a second: the three processes overlap
    procs = [module_process("image_fetch", args) for dummy in range(3)]
    results = [proc.result() for proc in procs]
    assert all("failed" not in r for r in results), results
    downloaded = [r for r in results if r["downloaded_bytes"]]
    assert len(downloaded) == 1 and downloaded[0]["downloaded_bytes"] == image.size
    others = [r for r in results if not r["downloaded_bytes"]]
    assert all(r["changed"] is False and r["verified"] == "sidecar" and r["path"] == downloaded[0]["path"]
               for r in others)
    assert max(r["lock_wait"] for r in others) > 0.2  # they waited for the download, then found it cached
    assert image.size <= proxy.downstream < image.size + 3 * OVERHEAD  # one image went over the wire
    assert (cache / image.ref.image_file).read_bytes() == image.data


def test_a_corrupt_cached_image_is_replaced(run_module, module_process, s3_image):
    image, proxy, cache, args = s3_image
    path = run_module("image_fetch", args)["path"]
    for attempt in range(2):
        os.chmod(path, 0o644)
        with open(path, "r+b") as handle:
            handle.seek(image.size // 2)
            handle.write(b"\x00\x01\x02")
        if attempt == 0:
            result = run_module("image_fetch", args, diff=True)
            assert result["diff"]["before"]["state"] == "corrupt"
        else:
            # in its own process: in-process, a warning goes to the controller's display once
            # another test has loaded controller code
            result = module_process("image_fetch", args).result()
            assert "did not match its SHA-256 and was replaced" in json.dumps(result["warnings"])
        assert result["changed"] is True and result["replaced_corrupt"] is True
        assert result["downloaded_bytes"] == image.size and open(path, "rb").read() == image.data


def test_check_mode_downloads_nothing(run_module, s3_image):
    image, proxy, cache, args = s3_image
    result = run_module("image_fetch", args, check_mode=True)
    assert result["changed"] is True and result["downloaded_bytes"] == 0 and result["manifest"] == image.manifest
    assert not cache.exists()
    run_module("image_fetch", args)
    assert run_module("image_fetch", args, check_mode=True)["changed"] is False


def test_unknown_images_and_bad_arguments_fail_clearly(run_module, s3_image, tmp_path):
    image, proxy, cache, args = s3_image
    result = run_module("image_fetch", dict(args, sha256="0" * 64))
    assert result["failed"] is True and result["error"] == "ImageNotFound" and "is not published" in result["msg"]
    result = run_module("image_fetch", dict(args, name="Debian 12"))
    assert result["failed"] is True and "image name" in result["msg"]
    result = run_module("image_fetch", dict(args, secret_key="inline", access_key="x"))
    assert result["failed"] is True and "mutually exclusive" in result["msg"]


def test_directory_store(run_module, tmp_path, make_image):
    image = make_image()
    store = tmp_path / "store"
    images.publish_image(images.open_store(str(store)), image.path)
    args = {"store_url": "file://%s" % store, "name": image.name, "sha256": image.sha256,
            "cache_dir": str(tmp_path / "cache"), "verify": "full"}
    result = run_module("image_fetch", args)
    assert result["changed"] is True and open(result["path"], "rb").read() == image.data
    again = run_module("image_fetch", args)
    assert again["changed"] is False and again["verified"] == "hash"
