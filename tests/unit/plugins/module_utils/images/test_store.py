"""Image naming, manifests and the image store (a directory, and S3 on a real moto_server)."""

import hashlib
import os
import stat

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

SHA = "0123456789abcdef" * 4


# --- naming -------------------------------------------------------------------------------------

def test_file_names_round_trip():
    assert image_naming.image_file_name("debian-12", SHA) == "debian-12-%s.qcow2" % SHA
    assert image_naming.manifest_file_name("fedora-41.minimal_x", SHA) == "fedora-41.minimal_x-%s.manifest.json" % SHA
    for name in ("debian-12", "a", "ubuntu-24.04", "x" * 64, "0-0"):
        ref = image_naming.parse_image_file_name(image_naming.image_file_name(name, SHA))
        assert ref == (name, SHA) and ref.image_file == image_naming.image_file_name(name, SHA)
        assert image_naming.parse_image_file_name(image_naming.manifest_file_name(name, SHA)) == (name, SHA)
    assert str(image_naming.ImageRef("debian-12", SHA)) == "debian-12-" + SHA


@pytest.mark.parametrize("name", ["", "Debian", "-debian", ".hidden", "x" * 65, "deb/ian", "deb ian", None, 12])
def test_bad_names_are_refused(name):
    with pytest.raises(image_naming.ImageNameError, match="image name"):
        image_naming.image_file_name(name, SHA)


@pytest.mark.parametrize("sha", ["", SHA[:-1], SHA + "0", SHA.upper(), "g" * 64])
def test_bad_hashes_are_refused(sha):
    with pytest.raises(image_naming.ImageNameError, match="64 lowercase"):
        image_naming.manifest_file_name("debian-12", sha)


@pytest.mark.parametrize("file_name", ["debian-12.qcow2", "debian-12-%s.img" % SHA, "dir/debian-12-%s.qcow2" % SHA,
                                       "debian-12-%s.qcow2.part" % SHA, "-%s.qcow2" % SHA, "README"])
def test_parse_refuses_other_files(file_name):
    with pytest.raises(image_naming.ImageNameError):
        image_naming.parse_image_file_name(file_name)


def test_image_references():
    assert image_naming.parse_image_ref("debian-12-" + SHA) == ("debian-12", SHA)
    assert image_naming.parse_image_ref("debian-12-%s.qcow2" % SHA) == ("debian-12", SHA)
    assert image_naming.parse_image_ref(" %s\n" % SHA) == (None, SHA)
    assert str(image_naming.parse_image_ref(SHA)) == SHA
    for bad in ("debian-12", "debian-12-" + SHA[:10], "Debian-" + SHA, ""):
        with pytest.raises(image_naming.ImageNameError):
            image_naming.parse_image_ref(bad)


def test_file_sha256_and_its_progress(tmp_path):
    data = os.urandom(3 * image_naming.CHUNK + 17)
    path = tmp_path / "x"
    path.write_bytes(data)
    calls = []
    assert image_naming.file_sha256(str(path), progress=lambda done, total: calls.append((done, total))) \
        == hashlib.sha256(data).hexdigest()
    assert calls[-1] == (len(data), len(data)) and len(calls) == 4
    assert [done for done, dummy in calls] == sorted(done for done, dummy in calls)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    calls.clear()
    assert image_naming.file_sha256(str(empty), progress=lambda d, t: calls.append((d, t))) == hashlib.sha256().hexdigest()
    assert calls == [(0, 0)]


# --- manifests ----------------------------------------------------------------------------------

def test_manifest_is_checked_against_its_image():
    manifest = image_naming.make_manifest("debian-12", SHA, 1234, "ab" * 32, {"kind": "debootstrap"}, ["openssh-server"])
    assert set(image_naming.MANIFEST_KEYS) <= set(manifest) and manifest["built_at"].endswith("Z")
    data = image_naming.manifest_bytes(manifest)
    assert data.endswith(b"\n") and image_naming.parse_manifest(data, image_naming.ImageRef("debian-12", SHA), 1234) == manifest
    with pytest.raises(image_naming.ManifestError, match="describes debian-12-%s, not debian-13-%s" % (SHA, SHA)):
        image_naming.parse_manifest(data, image_naming.ImageRef("debian-13", SHA))
    with pytest.raises(image_naming.ManifestError, match="says 1234 bytes, the image has 99"):
        image_naming.parse_manifest(data, image_naming.ImageRef("debian-12", SHA), 99)
    broken = dict(manifest)
    del broken["recipe_sha256"], broken["packages"]
    with pytest.raises(image_naming.ManifestError, match="lacks recipe_sha256, packages"):
        image_naming.check_manifest(broken)
    with pytest.raises(image_naming.ManifestError, match="m.json is not valid JSON"):
        image_naming.parse_manifest(b"{", source="m.json")
    with pytest.raises(image_naming.ManifestError, match="size must be a number of bytes"):
        image_naming.check_manifest(dict(manifest, size="12"))


# --- opening stores -----------------------------------------------------------------------------

def test_open_store_urls(tmp_path):
    assert images.open_store("file://%s" % tmp_path).root == str(tmp_path)
    assert images.open_store(str(tmp_path)).root == str(tmp_path)
    s3 = images.open_store("s3://bucket/some/prefix/", endpoint_url="http://127.0.0.1:1", access_key="a", secret_key="b")
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.location("x.qcow2") == "s3://bucket/some/prefix/x.qcow2"
    with pytest.raises(images.ImageStoreError, match="names no bucket"):
        images.open_store("s3:///prefix")
    with pytest.raises(images.ImageStoreError, match="use s3://bucket/prefix, file:///dir or an absolute path"):
        images.open_store("https://images.example.org/")
    with pytest.raises(images.ImageStoreError, match="local directory"):
        images.open_store("file://host/dir")


# --- the directory store ------------------------------------------------------------------------

def test_directory_publish_is_atomic_verified_and_idempotent(tmp_path, make_image):
    image = make_image(size=2 * image_naming.CHUNK + 5)
    store = images.open_store(str(tmp_path / "store"))
    seen = []
    result = images.publish_image(store, image.path, progress=lambda done, total: seen.append(done))
    assert result["changed"] is True and result["uploaded"] == ["image", "manifest"]
    assert result["before"]["image"] is None and result["manifest"] == image.manifest
    stored = tmp_path / "store" / image.ref.image_file
    assert stored.read_bytes() == image.data and stat.S_IMODE(stored.stat().st_mode) == 0o644
    assert image_naming.parse_manifest((tmp_path / "store" / image.ref.manifest_file).read_bytes()) == image.manifest
    assert os.listdir(tmp_path / "store" / ".incoming") == [] and seen[-1] == image.size

    again = images.publish_image(store, image.path)
    assert again["changed"] is False and again["uploaded"] == [] and again["manifest"] == image.manifest


def test_directory_publish_of_a_corrupt_file_stores_nothing(tmp_path, make_image):
    image = make_image()
    with open(image.path, "r+b") as handle:  # the bytes no longer match the name
        handle.seek(1000)
        handle.write(b"corrupt")
    store = images.open_store(str(tmp_path / "store"))
    with pytest.raises(images.IntegrityError, match="not to the SHA-256 in its name"):
        images.publish_image(store, image.path)
    assert sorted(os.listdir(tmp_path / "store")) == [".incoming"]
    assert os.listdir(tmp_path / "store" / ".incoming") == []


def test_directory_publish_repairs_a_half_published_image(tmp_path, make_image):
    image = make_image()
    store = images.open_store(str(tmp_path / "store"))
    images.publish_image(store, image.path)
    os.unlink(tmp_path / "store" / image.ref.manifest_file)  # an upload interrupted before the manifest
    result = images.publish_image(store, image.path)
    assert result["changed"] is True and result["uploaded"] == ["manifest"]
    assert store.stored_image(image.ref)["complete"] is True

    with open(tmp_path / "store" / image.ref.image_file, "ab") as handle:  # wrong size: sent again
        handle.write(b"x")
    result = images.publish_image(store, image.path)
    assert result["uploaded"] == ["image", "manifest"]
    assert (tmp_path / "store" / image.ref.image_file).read_bytes() == image.data


def test_a_corrupt_local_copy_never_damages_the_stored_image(tmp_path, make_image):
    image = make_image()
    store = images.open_store(str(tmp_path / "store"))
    images.publish_image(store, image.path)
    with open(image.path, "ab") as handle:  # the local copy is now wrong (another size)
        handle.write(b"junk")
    manifest = dict(image.manifest, size=image.size + 4)
    with pytest.raises(images.IntegrityError, match="the store was left as it is"):
        images.publish_image(store, image.path, manifest=manifest)
    assert store.stored_image(image.ref)["complete"] is True
    assert (tmp_path / "store" / image.ref.image_file).read_bytes() == image.data


def test_publish_refuses_a_manifest_of_other_bytes(tmp_path, make_image):
    image = make_image()
    other = make_image(name="debian-13")
    store = images.open_store(str(tmp_path / "store"))
    with pytest.raises(image_naming.ManifestError, match="describes debian-13-"):
        images.publish_image(store, image.path, manifest=other.manifest)
    os.unlink(image.manifest_path)
    with pytest.raises(image_naming.ManifestError, match="cannot read the manifest"):
        images.publish_image(store, image.path)
    assert not (tmp_path / "store").exists()


def test_directory_list_read_and_delete(tmp_path, make_image):
    one, two = make_image(name="one"), make_image(name="two")
    store = images.open_store(str(tmp_path / "store"))
    for image in (one, two):
        images.publish_image(store, image.path)
    (tmp_path / "store" / "README").write_text("not an image")
    (tmp_path / "store" / "other.qcow2").write_text("not named as an image")
    listed = store.list_images()
    assert sorted(listed) == sorted([one.ref, two.ref])
    assert listed[one.ref]["image"].size == one.size and listed[one.ref]["manifest"] is not None
    with store.read(one.ref.image_file, 1000) as reader:
        assert (reader.offset, reader.total) == (1000, one.size)
        assert b"".join(reader.chunks()) == one.data[1000:]
    store.delete_image(one.ref)
    assert sorted(os.listdir(tmp_path / "store")) == sorted([".incoming", "README", "other.qcow2",
                                                             two.ref.image_file, two.ref.manifest_file])
    assert store.get_manifest(one.ref) is None
    with pytest.raises(images.ImageNotFound):
        store.read(one.ref.image_file)


# --- S3 (moto_server) ---------------------------------------------------------------------------

def test_s3_publish_stores_sha256_metadata_and_is_idempotent(s3, make_image):
    image = make_image(size=700 * 1024)
    store = s3.store()
    result = images.publish_image(store, image.path)
    assert result["changed"] is True and result["uploaded"] == ["image", "manifest"]
    head = s3.client.head_object(Bucket=s3.bucket, Key="images/" + image.ref.image_file)
    assert head["ContentLength"] == image.size and head["Metadata"]["sha256"] == image.sha256
    body = s3.client.get_object(Bucket=s3.bucket, Key="images/" + image.ref.image_file)["Body"].read()
    assert body == image.data
    assert "-" not in head["ETag"]  # one PutObject below the part size
    assert images.publish_image(store, image.path)["changed"] is False
    assert s3.keys() == sorted(["images/" + image.ref.image_file, "images/" + image.ref.manifest_file])


def test_s3_multipart_upload_is_completed_only_when_the_bytes_verify(s3, make_image):
    image = make_image(size=12 * images.MIB + 3)
    store = s3.store(part_size=5 * images.MIB, concurrency=2)
    progress = []
    images.publish_image(store, image.path, progress=lambda done, total: progress.append(done))
    key = "images/" + image.ref.image_file
    head = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert head["ETag"].endswith('-3"') and head["Metadata"]["sha256"] == image.sha256  # three parts
    assert s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == image.data
    assert progress[-1] == image.size and s3.pending_uploads() == []

    corrupt = make_image(name="corrupt", size=12 * images.MIB)
    with open(corrupt.path, "r+b") as handle:
        handle.seek(11 * images.MIB)
        handle.write(b"bit rot")
    with pytest.raises(images.IntegrityError, match="nothing was stored"):
        images.publish_image(store, corrupt.path)
    assert [k for k in s3.keys() if "corrupt" in k] == [] and s3.pending_uploads() == []


def test_s3_object_without_sha256_metadata_is_uploaded_again(s3, make_image):
    image = make_image()
    s3.client.put_object(Bucket=s3.bucket, Key="images/" + image.ref.image_file, Body=image.data)
    s3.client.put_object(Bucket=s3.bucket, Key="images/" + image.ref.manifest_file, Body=image_naming.manifest_bytes(image.manifest))
    store = s3.store()
    stored = store.stored_image(image.ref)
    assert stored["complete"] is False and "has no sha256 metadata" in stored["problems"][0]
    result = images.publish_image(store, image.path)
    assert result["uploaded"] == ["image", "manifest"]
    assert store.head(image.ref.image_file).sha256 == image.sha256


def test_s3_ranged_read_and_listing(s3, make_image):
    image = make_image()
    store = s3.store()
    images.publish_image(store, image.path)
    s3.client.put_object(Bucket=s3.bucket, Key="images/notes.txt", Body=b"x")
    s3.client.put_object(Bucket=s3.bucket, Key="images/sub/%s" % image.ref.image_file, Body=b"x")
    with store.read(image.ref.image_file, 100000) as reader:
        assert (reader.offset, reader.total) == (100000, image.size)
        assert b"".join(reader.chunks()) == image.data[100000:]
    with store.read(image.ref.image_file, image.size) as reader:  # nothing left: S3 refuses, read it all
        assert reader.offset == 0 and b"".join(reader.chunks()) == image.data
    assert list(store.list_images()) == [image.ref]
    store.delete_image(image.ref)
    assert store.list_images() == {} and s3.keys("images/") == ["images/notes.txt", "images/sub/" + image.ref.image_file]


def test_s3_missing_bucket_says_so(s3, make_image):
    image = make_image()
    store = images.open_store("s3://no-such-bucket/x", endpoint_url=s3.endpoint, access_key="a", secret_key=s3.secret)
    with pytest.raises(images.ImageStoreError) as info:
        images.publish_image(store, image.path)
    assert "NoSuchBucket" in str(info.value) and "create the bucket no-such-bucket first" in str(info.value)
    assert s3.secret not in str(info.value)
