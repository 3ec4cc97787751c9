"""image_publish, run in-process against a real moto_server (S3) and a directory store."""

import json
import os

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images


def test_publishes_to_s3_once(run_module, s3, make_image, tcp_proxy):
    image = make_image(size=1024 * 1024)
    proxy = tcp_proxy(s3.endpoint)
    args = dict(s3.options(endpoint=proxy.url), image=image.path)
    result = run_module("image_publish", args, diff=True)
    assert "failed" not in result, result
    assert result["changed"] is True and result["uploaded"] == ["image", "manifest"]
    assert (result["name"], result["sha256"], result["size"]) == (image.name, image.sha256, image.size)
    assert result["location"] == "s3://testfleet-images/images/" + image.ref.image_file
    assert result["manifest"] == image.manifest
    assert result["diff"]["before"] == {"image": None, "manifest": None}
    assert result["diff"]["after"]["image"] == {"file": image.ref.image_file, "size": image.size,
                                                "sha256": image.sha256}
    head = s3.client.head_object(Bucket=s3.bucket, Key="images/" + image.ref.image_file)
    assert head["Metadata"]["sha256"] == image.sha256 and head["ContentLength"] == image.size
    assert proxy.upstream > image.size

    proxy.reset()
    again = run_module("image_publish", args, diff=True)
    assert again["changed"] is False and again["uploaded"] == []
    assert again["diff"]["before"] == again["diff"]["after"]
    assert proxy.upstream < 20000  # a HEAD and a GET: nothing was sent again
    assert s3.secret not in json.dumps(result) + json.dumps(again)


def test_check_mode_sends_nothing(run_module, s3, make_image):
    image = make_image()
    result = run_module("image_publish", dict(s3.options(), image=image.path), check_mode=True, diff=True)
    assert result["changed"] is True and result["uploaded"] == ["image", "manifest"]
    assert result["diff"]["after"]["manifest"] == image.manifest
    assert s3.keys() == []
    run_module("image_publish", dict(s3.options(), image=image.path))
    assert run_module("image_publish", dict(s3.options(), image=image.path), check_mode=True)["changed"] is False


def test_large_images_go_as_verified_multipart_uploads(run_module, s3, make_image):
    image = make_image(size=11 * images.MIB)
    result = run_module("image_publish", dict(s3.options(), image=image.path, part_size_mib=5, concurrency=2,
                                              progress_log=str(image.path) + ".log", progress_interval=0))
    assert result["changed"] is True, result
    key = "images/" + image.ref.image_file
    head = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ETag"].endswith('-3"') and head["Metadata"]["sha256"] == image.sha256
    assert s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == image.data
    assert s3.pending_uploads() == []
    lines = open(str(image.path) + ".log").read().splitlines()
    assert "uploading 11.0 MiB of 11.0 MiB (100%)" in lines[-1]


def test_a_file_that_does_not_match_its_name_is_not_published(run_module, s3, make_image):
    image = make_image(size=6 * images.MIB)
    with open(image.path, "r+b") as handle:
        handle.seek(5 * images.MIB + 10)
        handle.write(b"changed")
    result = run_module("image_publish", dict(s3.options(), image=image.path, part_size_mib=5))
    assert result["failed"] is True and result["error"] == "IntegrityError"
    assert "not to the SHA-256 in its name" in result["msg"]
    assert s3.keys() == [] and s3.pending_uploads() == []


def test_directory_store(run_module, tmp_path, make_image):
    image = make_image()
    store = tmp_path / "store"
    args = {"store_url": "file://%s" % store, "image": image.path}
    result = run_module("image_publish", args)
    assert result["changed"] is True and result["location"] == str(store / image.ref.image_file)
    assert (store / image.ref.image_file).read_bytes() == image.data
    assert run_module("image_publish", args)["changed"] is False


def test_manifest_from_another_place(run_module, tmp_path, make_image):
    image = make_image()
    moved = tmp_path / "elsewhere.json"
    os.rename(image.manifest_path, moved)
    args = {"store_url": str(tmp_path / "store"), "image": image.path}
    assert "cannot read the manifest" in run_module("image_publish", args)["msg"]
    result = run_module("image_publish", dict(args, manifest=str(moved)))
    assert result["changed"] is True and result["manifest"] == image.manifest


def test_clear_failures(run_module, tmp_path, s3, make_image):
    image = make_image()
    renamed = tmp_path / "build" / "debian-12.qcow2"
    os.rename(image.path, renamed)
    result = run_module("image_publish", {"store_url": str(tmp_path / "store"), "image": str(renamed)})
    assert result["failed"] is True and "is not an image file name" in result["msg"]
    os.rename(renamed, image.path)
    result = run_module("image_publish", {"store_url": str(tmp_path / "store"), "image": image.path,
                                          "endpoint_url": s3.endpoint})
    assert result["msg"] == "endpoint_url: only for an s3:// store_url"
    result = run_module("image_publish", dict(s3.options(), image=image.path, store_url="s3://missing-bucket/x"))
    assert "NoSuchBucket" in result["msg"] and s3.secret not in json.dumps(result)
    result = run_module("image_publish", dict(s3.options(), image=image.path, part_size_mib=1))
    assert "at least 5" in result["msg"]
