"""image_prune on a directory store, on S3 (moto_server) and on a worker's cache."""

import json
import os
import time

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images.cache import ImageCache

DAY = 86400


def backdate(days, *paths):
    moment = time.time() - days * DAY
    for path in paths:
        os.utime(path, (moment, moment))


def names(items):
    return sorted(item["image"] for item in items)


def test_directory_store_check_mode_lists_then_the_prune_removes(run_module, tmp_path, make_image):
    root = tmp_path / "store"
    store = images.open_store(str(root))
    referenced, old, recent, by_hash = (make_image(name=n) for n in ("referenced", "old", "recent", "by-hash"))
    for image in (referenced, old, recent, by_hash):
        images.publish_image(store, image.path)
    for image in (referenced, old, by_hash):
        backdate(40, root / image.ref.image_file, root / image.ref.manifest_file)
    (root / "README").write_text("not an image")
    backdate(40, root / "README")
    args = {"store_url": str(root), "keep": [str(referenced.ref), by_hash.sha256], "older_than_days": 30}
    listing = sorted(os.listdir(root))

    check = run_module("image_prune", args, check_mode=True, diff=True)
    assert check["changed"] is True and names(check["store_removed"]) == [str(old.ref)]
    assert check["store_removed"][0]["files"] == 2 and check["store_removed"][0]["age_days"] >= 40
    assert check["freed_bytes"] == old.size + os.path.getsize(root / old.ref.manifest_file)
    assert {item["image"]: item["reason"] for item in check["store_kept"]} == {
        str(referenced.ref): "referenced", str(by_hash.ref): "referenced", str(recent.ref): "recent"}
    assert str(old.ref) in check["diff"]["before"]["store"] and str(old.ref) not in check["diff"]["after"]["store"]
    assert sorted(os.listdir(root)) == listing  # check mode removed nothing

    result = run_module("image_prune", args)
    assert result["changed"] is True and names(result["store_removed"]) == [str(old.ref)]
    assert sorted(os.listdir(root)) == sorted(set(listing) - {old.ref.image_file, old.ref.manifest_file})
    assert run_module("image_prune", args)["changed"] is False


def test_directory_store_leftovers_of_interrupted_uploads(run_module, tmp_path, make_image):
    root = tmp_path / "store"
    image = make_image()
    images.publish_image(images.open_store(str(root)), image.path)
    stale = root / ".incoming" / (image.ref.image_file + ".x1y2z3")
    fresh = root / ".incoming" / (image.ref.image_file + ".a1b2c3")
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload running now")
    backdate(3, stale)
    result = run_module("image_prune", {"store_url": str(root), "keep": [image.sha256], "older_than_days": 0})
    assert result["store_incoming_removed"] == [stale.name] and result["store_removed"] == []
    assert not stale.exists() and fresh.exists()  # younger than a day: maybe a publish in progress


def test_s3_store(run_module, s3, make_image):
    store = s3.store()
    kept, gone = make_image(name="kept"), make_image(name="gone")
    for image in (kept, gone):
        images.publish_image(store, image.path)
    s3.client.put_object(Bucket=s3.bucket, Key="images/notes.txt", Body=b"x")
    keys = s3.keys()
    args = dict(s3.options(), keep=[str(kept.ref)], older_than_days=0)
    recent = run_module("image_prune", dict(args, older_than_days=1))
    assert recent["changed"] is False and names(recent["store_kept"]) == [str(gone.ref), str(kept.ref)]

    check = run_module("image_prune", args, check_mode=True)
    assert check["changed"] is True and names(check["store_removed"]) == [str(gone.ref)]
    assert s3.keys() == keys
    result = run_module("image_prune", args)
    assert names(result["store_removed"]) == [str(gone.ref)]
    assert s3.keys() == sorted(["images/notes.txt", "images/" + kept.ref.image_file, "images/" + kept.ref.manifest_file])
    assert s3.secret not in json.dumps(result)


def test_cache(run_module, tmp_path, make_image):
    store = images.open_store(str(tmp_path / "store"))
    cache = ImageCache(str(tmp_path / "cache"))
    referenced, unused, in_use, recent = (make_image(name=n) for n in ("referenced", "unused", "in-use", "recent"))
    for image in (referenced, unused, in_use, recent):
        images.publish_image(store, image.path)
        cache.fetch(store, image.ref)
    for image in (referenced, unused, in_use):  # last fetched 10 days ago
        sidecar = cache.sidecar_path(image.ref)
        data = json.loads(open(sidecar).read())
        data["used_at"] -= 10 * DAY
        with open(sidecar, "w") as handle:
            handle.write(json.dumps(data))
    orphan = make_image(name="orphan")
    with open(cache.partial_path(orphan.ref), "wb") as handle:
        handle.write(orphan.data[:1000])
    backdate(10, cache.partial_path(orphan.ref))
    args = {"cache_dir": cache.root, "keep": [str(referenced.ref)], "older_than_days": 7}

    check = run_module("image_prune", args, check_mode=True)
    assert names(check["cache_removed"]) == [str(in_use.ref), str(unused.ref)]
    assert check["cache_partials_removed"] == [cache.partial_path(orphan.ref)]
    assert os.path.exists(cache.image_path(unused.ref)) and os.path.exists(cache.partial_path(orphan.ref))

    with cache.lock(in_use.ref):  # a fetch of it is running
        result = run_module("image_prune", args, diff=True)
    assert result["changed"] is True and names(result["cache_removed"]) == [str(unused.ref)]
    assert {item["image"]: item["reason"] for item in result["cache_kept"]} == {
        str(referenced.ref): "referenced", str(in_use.ref): "in use", str(recent.ref): "recent"}
    assert sorted(result["diff"]["after"]["cache"]) == sorted(str(i.ref) for i in (referenced, in_use, recent))
    for path in (cache.image_path(unused.ref), cache.manifest_path(unused.ref), cache.sidecar_path(unused.ref),
                 cache.lock_path(unused.ref), cache.partial_path(orphan.ref)):
        assert not os.path.exists(path), path
    assert os.path.exists(cache.image_path(in_use.ref)) and os.path.exists(cache.image_path(referenced.ref))
    # what was kept is still served from the cache, verified by its sidecar
    assert cache.fetch(store, referenced.ref)["verified"] == "sidecar"


def test_refuses_what_could_empty_the_store(run_module, tmp_path, make_image):
    root = tmp_path / "store"
    image = make_image()
    images.publish_image(images.open_store(str(root)), image.path)
    result = run_module("image_prune", {"store_url": str(root), "keep": [], "older_than_days": 0})
    assert result["failed"] is True and "allow_empty_keep" in result["msg"]
    result = run_module("image_prune", {"store_url": str(root), "keep": ["debian-12-abc"], "older_than_days": 0})
    assert result["failed"] is True and "is not an image reference" in result["msg"]
    result = run_module("image_prune", {"keep": [image.sha256]})
    assert result["failed"] is True and "store_url, cache_dir" in result["msg"]
    assert os.path.exists(root / image.ref.image_file)
    result = run_module("image_prune", {"store_url": str(root), "keep": [], "allow_empty_keep": True,
                                        "older_than_days": 0})
    assert names(result["store_removed"]) == [str(image.ref)] and not os.path.exists(root / image.ref.image_file)
