"""Recipes of VM images: schema, canonical hash, cloud-image recipes (Fedora, CentOS), the parts
of a build that need no root (finding a built image, verified downloads, cloud-init seed)."""

import hashlib
import http.server
import json
import os
import threading
import time
import urllib.request

import pytest
import yaml

from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

from ansible_collections.testfleet.infra.plugins.module_utils.vm import build as vm_build
from ansible_collections.testfleet.infra.plugins.module_utils.vm import cloud_image as vm_cloud_image
from ansible_collections.testfleet.infra.plugins.module_utils.vm import rootfs as vm_rootfs
from ansible_collections.testfleet.infra.plugins.module_utils.vm import steps as vm_steps
from ansible_collections.testfleet.infra.plugins.module_utils.vm import recipe as vm_recipe
from ansible_collections.testfleet.infra.plugins.module_utils.images.cache import ProgressLog

FEDORA_SHA = "6205ae0c524b4d1816dbd3573ce29b5c44ed26c9fbc874fbe48c41c89dd0bac2"
CENTOS_SHA = "9f3a1b5c7d2e4f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOq1d0aT9h5N1y4m8v1v5Jp4l8h0v0s9m0vS0XcXkq3a alice@example.org"


def debian(**extra):
    recipe = {"name": "debian-12", "base": {"debootstrap": {"suite": "bookworm"}}}
    recipe.update(extra)
    return recipe


def fedora(**extra):
    url = ("https://download.fedoraproject.org/pub/fedora/linux/releases/41/Cloud/x86_64/images/"
           "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2")
    recipe = {"name": "fedora-41", "base": {"cloud_image": {"url": url, "sha256": FEDORA_SHA}},
              "packages": ["python3", "gcc"], "user": {"name": "tester", "ssh_authorized_keys": [KEY]}}
    recipe.update(extra)
    return recipe


def centos(**extra):
    recipe = {"name": "centos-stream-9", "base": {"cloud_image": {
        "url": "https://cloud.centos.org/centos/9-stream/x86_64/images/CentOS-Stream-GenericCloud-9-latest.x86_64.qcow2",
        "sha256": CENTOS_SHA.upper()}}, "packages": ["python3"], "setup": "dnf -y install make\n"}
    recipe.update(extra)
    return recipe


# --- schema -------------------------------------------------------------------------------------

def test_minimal_recipe_gets_every_default():
    recipe = vm_recipe.parse_recipe(debian())
    assert recipe.data == {
        "name": "debian-12",
        "base": {"debootstrap": {"suite": "bookworm", "mirror": "http://deb.debian.org/debian", "variant": "minbase",
                                 "components": ["main"]}},
        "packages": [], "files": [], "setup": None,
        "user": {"name": "tester", "ssh_authorized_keys": [], "sudo": True, "shell": "/bin/bash"},
        "disk_size": 4 * 1024 ** 3, "check": None, "revision": ""}
    assert recipe.base_kind == "debootstrap" and recipe.name == "debian-12"
    # every debootstrap image gets a kernel, systemd, udev, sshd and sudo besides its packages
    assert set(vm_recipe.BASE_PACKAGES) <= set(recipe.all_packages())
    assert "linux-image-amd64" in recipe.all_packages()


def test_full_recipe_is_normalised(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "motd").write_bytes(b"welcome\n")
    recipe = vm_recipe.parse_recipe(debian(
        base={"debootstrap": {"suite": "bookworm", "mirror": "http://mirror.example.org/debian/", "variant": "buildd",
                              "components": ["main", "contrib"]}},
        packages=["python3", "curl", "python3"],
        files=[{"path": "/etc/motd", "src": "files/motd"},
               {"path": "/usr/local/bin/hello", "content": "#!/bin/sh\necho hi\n", "mode": "0755", "owner": "tester",
                "group": "tester"},
               {"path": "/etc/x.conf", "content": "", "mode": 0o600}],
        setup="#!/bin/sh\necho ok\n", user={"name": "ci", "ssh_authorized_keys": [KEY + "\n"], "sudo": False},
        disk_size="2G", check="python3 --version", revision=3), base_dir=str(tmp_path))
    data = recipe.data
    assert data["base"]["debootstrap"]["mirror"] == "http://mirror.example.org/debian"
    assert data["packages"] == ["curl", "python3"]
    assert data["files"][0] == {"path": "/etc/motd", "sha256": hashlib.sha256(b"welcome\n").hexdigest(), "mode": "0644",
                                "owner": "root", "group": "root"}
    assert data["files"][1]["mode"] == "0755" and data["files"][1]["owner"] == "tester"
    assert data["files"][2]["mode"] == "0600"
    assert recipe.file_content(0) == b"welcome\n" and recipe.file_content(2) == b""
    assert data["user"] == {"name": "ci", "ssh_authorized_keys": [KEY], "sudo": False, "shell": "/bin/bash"}
    assert data["disk_size"] == 2 * 1024 ** 3 and data["revision"] == "3"


@pytest.mark.parametrize("recipe, message", [
    ({"base": {"debootstrap": {"suite": "bookworm"}}}, "name is required"),
    ({"name": "debian-12"}, "base is required"),
    (debian(name="Debian 12"), "recipe: name: an image name"),
    (debian(packges=["x"]), "unknown key 'packges' (did you mean 'packages'?)"),
    (debian(base={}), "exactly one of debootstrap or cloud_image"),
    (debian(base={"debootstrap": {"suite": "bookworm"}, "cloud_image": {}}), "exactly one"),
    (debian(base={"debootsrap": {"suite": "bookworm"}}), "did you mean 'debootstrap'"),
    (debian(base={"debootstrap": {}}), "suite is required"),
    (debian(base={"debootstrap": {"suite": "Bookworm!"}}), "base.debootstrap.suite: 'Bookworm!' is not a suite"),
    (debian(base={"debootstrap": {"suite": "bookworm", "mirror": "ftp://x"}}), "not an http(s):// or file:// URL"),
    (debian(base={"debootstrap": {"suite": "bookworm", "variant": "fakechroot"}}), "variant: must be one of"),
    (debian(base={"debootstrap": {"suite": "bookworm", "mirorr": "x"}}), "did you mean 'mirror'"),
    (debian(packages="python3"), "packages: must be a list"),
    (debian(packages=["--force-yes"]), "packages[0]: '--force-yes' is not a package name"),
    (debian(packages=["ok", ""]), "packages[1]: must be a non-empty string"),
    (debian(files=[{"path": "etc/motd", "content": "x"}]), "files[0].path: must be an absolute path"),
    (debian(files=[{"path": "/etc/../../x", "content": "x"}]), "must be an absolute path"),
    (debian(files=[{"path": "/etc/motd"}]), "files[0]: give exactly one of content or src"),
    (debian(files=[{"path": "/etc/motd", "content": "x", "src": "y"}]), "exactly one of content or src"),
    (debian(files=[{"path": "/etc/motd", "src": "motd"}]), "is relative, but the recipe is not a file"),
    (debian(files=[{"path": "/etc/motd", "src": "/nonexistent/motd"}]), "cannot read /nonexistent/motd"),
    (debian(files=[{"path": "/etc/motd", "content": "x", "mode": "rwx"}]), "not an octal mode"),
    (debian(files=[{"path": "/etc/motd", "content": "x", "owner": "Bad User"}]), "files[0].owner"),
    (debian(files=[{"path": "/etc/motd", "content": 3}]), "files[0].content: must be a string"),
    (debian(setup=["echo"]), "setup: must be a script"),
    (debian(user={"name": "root"}), "the test user cannot be root"),
    (debian(user={"name": "Tester"}), "user.name: 'Tester' is not a user name"),
    (debian(user={"sudo": "yes"}), "user.sudo: must be true or false"),
    (debian(user={"ssh_authorized_keys": ["not a key"]}), "ssh_authorized_keys[0]: is not one OpenSSH public key"),
    (debian(user={"ssh_authorized_keys": [KEY + "\n" + KEY]}), "is not one OpenSSH public key"),
    (debian(user={"shell": "bash"}), "user.shell: must be an absolute path"),
    (debian(user={"home": "/x"}), "unknown key 'home'"),
    (debian(disk_size="big"), "disk_size: must be a size"),
    (debian(disk_size="100M"), "outside 256M..2T"),
    (debian(disk_size=True), "must be a size"),
    (debian(check=""), "check: must be a command"),
    (fedora(base={"cloud_image": {"sha256": FEDORA_SHA}}), "base.cloud_image: url is required"),
    (fedora(base={"cloud_image": {"url": "https://x/y.qcow2"}}), "sha256 is required"),
    (fedora(base={"cloud_image": {"url": "https://x/y.qcow2", "sha256": "abc"}}), "not 64 hexadecimal digits"),
    (fedora(base={"cloud_image": {"url": "https://x/y.qcow2", "sha256": FEDORA_SHA, "format": "vmdk"}}),
     "format: must be one of qcow2, raw"),
    ("just text", "must be a mapping"),
])
def test_bad_recipes_name_the_key(recipe, message):
    with pytest.raises(vm_recipe.RecipeError) as error:
        vm_recipe.parse_recipe(recipe)
    assert message in str(error.value)
    assert str(error.value).startswith("recipe")


def test_sizes():
    assert vm_recipe.parse_size("4G") == 4 * 1024 ** 3
    assert vm_recipe.parse_size("4GiB") == 4 * 1024 ** 3
    assert vm_recipe.parse_size("512M") == 512 * 1024 ** 2
    assert vm_recipe.parse_size("1.5T") == int(1.5 * 1024 ** 4)
    assert vm_recipe.parse_size(300 * 1024 ** 2) == 300 * 1024 ** 2


def test_recipe_file_with_relative_src(tmp_path):
    (tmp_path / "motd").write_text("hello\n")
    (tmp_path / "debian.yml").write_text(
        "name: debian-12\nbase:\n  debootstrap:\n    suite: bookworm\nfiles:\n  - path: /etc/motd\n    src: motd\n")
    recipe = vm_recipe.load_recipe(str(tmp_path / "debian.yml"))
    assert recipe.file_content(0) == b"hello\n"
    (tmp_path / "broken.yml").write_text("name: [debian\n")
    with pytest.raises(vm_recipe.RecipeError, match=r"broken.yml: line \d+ column \d+ is not valid YAML"):
        vm_recipe.load_recipe(str(tmp_path / "broken.yml"))
    with pytest.raises(vm_recipe.RecipeError, match="cannot read the recipe"):
        vm_recipe.load_recipe(str(tmp_path / "missing.yml"))
    (tmp_path / "bad.yml").write_text("name: debian-12\nbase: {debootstrap: {suite: bookworm}}\nsetpu: x\n")
    with pytest.raises(vm_recipe.RecipeError, match=r"bad.yml: unknown key 'setpu' \(did you mean 'setup'\?\)"):
        vm_recipe.load_recipe(str(tmp_path / "bad.yml"))


# --- the canonical hash -------------------------------------------------------------------------

def test_hash_ignores_order_defaults_and_where_files_come_from(tmp_path):
    (tmp_path / "motd").write_text("hello\n")
    one = vm_recipe.parse_recipe(debian(packages=["b", "a"], files=[{"path": "/etc/motd", "content": "hello\n"}]))
    two = vm_recipe.parse_recipe({
        "files": [{"path": "/etc/motd", "src": str(tmp_path / "motd"), "mode": "644", "owner": "root"}],
        "packages": ["a", "b", "a"],
        "base": {"debootstrap": {"components": ["main"], "suite": "bookworm", "variant": "minbase",
                                 "mirror": "http://deb.debian.org/debian/"}},
        "name": "debian-12", "user": {"name": "tester", "sudo": True}, "disk_size": "4G", "revision": ""})
    assert one.sha256 == two.sha256
    assert len(one.sha256) == 64 and int(one.sha256, 16) >= 0


def test_hash_is_stable_across_releases():
    # the canonical form is part of the contract: images are found by this hash
    doc = vm_recipe.parse_recipe(debian()).data
    expected = hashlib.sha256(vm_recipe.canonical_json(dict(doc, format=vm_recipe.BUILD_FORMAT))).hexdigest()
    assert vm_recipe.parse_recipe(debian()).sha256 == expected
    assert vm_recipe.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode("utf-8")


@pytest.mark.parametrize("change", [
    {"packages": ["python3"]},
    {"files": [{"path": "/etc/motd", "content": "other\n"}]},
    {"files": [{"path": "/etc/motd", "content": "hello\n", "mode": "0600"}]},
    {"setup": "echo 1\n"},
    {"user": {"name": "ci"}},
    {"user": {"ssh_authorized_keys": [KEY]}},
    {"user": {"sudo": False}},
    {"disk_size": "8G"},
    {"check": "true"},
    {"revision": "2024-06"},
    {"name": "debian-12-other"},
    {"base": {"debootstrap": {"suite": "trixie"}}},
    {"base": {"debootstrap": {"suite": "bookworm", "mirror": "http://snapshot.debian.org/archive/debian/20240601T000000Z"}}},
])
def test_every_input_changes_the_hash(change):
    base = dict(files=[{"path": "/etc/motd", "content": "hello\n"}])
    assert vm_recipe.parse_recipe(debian(**base)).sha256 != vm_recipe.parse_recipe(debian(**dict(base, **change))).sha256


def test_a_file_src_changes_the_hash_with_its_content(tmp_path):
    src = tmp_path / "motd"
    src.write_text("one\n")
    first = vm_recipe.parse_recipe(debian(files=[{"path": "/etc/motd", "src": str(src)}]))
    src.write_text("two\n")
    assert vm_recipe.parse_recipe(debian(files=[{"path": "/etc/motd", "src": str(src)}])).sha256 != first.sha256


# --- cloud-image recipes (Fedora, CentOS): not reachable here, checked as far as can be -----------

def test_cloud_recipes():
    recipe = vm_recipe.parse_recipe(fedora())
    assert recipe.base_kind == "cloud_image"
    assert recipe.base == {"url": fedora()["base"]["cloud_image"]["url"], "sha256": FEDORA_SHA, "format": "qcow2"}
    assert recipe.all_packages() == ["gcc", "python3"]  # no Debian base packages for a cloud image
    stream = vm_recipe.parse_recipe(centos())
    assert stream.base["sha256"] == CENTOS_SHA  # lower-cased
    # the URL is where the image comes from, its SHA-256 what it is: a moved mirror rebuilds nothing
    moved = fedora(base={"cloud_image": {"url": "https://mirror.example.org/Fedora-41.qcow2", "sha256": FEDORA_SHA}})
    assert vm_recipe.parse_recipe(moved).sha256 == recipe.sha256
    other = fedora(base={"cloud_image": {"url": "https://mirror.example.org/Fedora-41.qcow2", "sha256": "0" * 64}})
    assert vm_recipe.parse_recipe(other).sha256 != recipe.sha256
    raw = fedora(base={"cloud_image": {"url": "https://x/Fedora.raw", "sha256": FEDORA_SHA, "format": "raw"}})
    assert vm_recipe.parse_recipe(raw).base["format"] == "raw"


def test_cloud_init_user_data_applies_the_recipe():
    recipe = vm_recipe.parse_recipe(fedora(
        files=[{"path": "/etc/motd", "content": "hi\n"},
               {"path": "/home/tester/.bashrc", "content": "x=1\n", "owner": "tester", "group": "tester",
                "mode": "0600"}],
        setup="dnf -y install make\n"))
    text = vm_cloud_image.cloud_user_data(recipe)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert document["users"] == [{"name": "tester", "shell": "/bin/bash", "lock_passwd": True,
                                  "ssh_authorized_keys": [KEY], "sudo": "ALL=(ALL) NOPASSWD:ALL"}]
    assert document["packages"] == ["gcc", "python3"] and document["package_update"] is True
    files = {item["path"]: item for item in document["write_files"]}
    # testfleet's per-boot SSH keys unit, its script and the sshd drop-in are in every image
    assert "/etc/systemd/system/testfleet-ssh-keys.service" in files
    assert "/run/testfleet/authorized_keys/tester" in files["/usr/local/sbin/testfleet-ssh-keys"]["content"]
    assert files["/usr/local/sbin/testfleet-ssh-keys"]["permissions"] == "0755"
    assert "AuthorizedKeysFile" in files["/etc/ssh/sshd_config.d/testfleet.conf"]["content"]
    import base64
    assert base64.b64decode(files["/etc/motd"]["content"]) == b"hi\n"
    assert files["/home/tester/.bashrc"]["owner"] == "tester:tester" and files["/home/tester/.bashrc"]["defer"]
    assert files["/root/.testfleet-setup"]["content"] == "dnf -y install make\n"
    script = document["runcmd"][0][2]
    assert "/bin/sh -e /root/.testfleet-setup" in script
    assert vm_cloud_image.BUILD_OK in script and vm_cloud_image.BUILD_FAILED in script
    assert "cloud-init.disabled" in script and "systemctl enable testfleet-ssh-keys.service" in script
    assert document["power_state"]["mode"] == "poweroff"


def test_cloud_init_seed_is_served_on_loopback_for_the_guest():
    recipe = vm_recipe.parse_recipe(centos())
    with vm_cloud_image.SeedServer(vm_cloud_image.cloud_user_data(recipe), "build-1") as seed:
        assert seed.url == "http://10.0.2.2:%d/" % seed.port  # the host, seen from QEMU's user network
        base = "http://127.0.0.1:%d" % seed.port
        assert urllib.request.urlopen(base + "/meta-data").read() == b"instance-id: build-1\nlocal-hostname: build-1\n"
        assert urllib.request.urlopen(base + "/user-data").read().startswith(b"#cloud-config\n")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base + "/other")
    assert seed.requests == ["/meta-data", "/user-data", "/other"]
    argument = vm_cloud_image.smbios_seed_argument(seed.url)
    assert argument == "type=1,serial=ds=nocloud;s=http://10.0.2.2:%d/" % seed.port


class _Files(http.server.BaseHTTPRequestHandler):
    data = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_file():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_download_keeps_only_the_expected_bytes(tmp_path, http_file):
    data = os.urandom(3 * 1024 * 1024 + 17)
    _Files.data = data
    url = "http://127.0.0.1:%d/Fedora.qcow2" % http_file.server_address[1]
    target = str(tmp_path / "cloud.img")
    seen = []
    assert vm_cloud_image.download_verified(url, hashlib.sha256(data).hexdigest(), target,
                                            progress=lambda *args: seen.append(args)) == len(data)
    with open(target, "rb") as handle:
        assert handle.read() == data
    assert seen[-1] == ("download", len(data), len(data))
    os.unlink(target)
    with pytest.raises(vm_steps.BuildError, match="not to the recipe's sha256 %s: not used" % ("0" * 64)):
        vm_cloud_image.download_verified(url, "0" * 64, target)
    assert os.listdir(str(tmp_path)) == []  # neither the file nor its part
    with pytest.raises(vm_steps.BuildError, match="cannot download"):
        vm_cloud_image.download_verified("http://127.0.0.1:1/x", "0" * 64, target)
    assert os.listdir(str(tmp_path)) == []


def test_cloud_base_image_is_cached_and_rechecked(tmp_path):
    data = b"not really a qcow2 but bytes\n" * 1000
    source = tmp_path / "Fedora.qcow2"
    source.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    recipe = vm_recipe.parse_recipe(fedora(base={"cloud_image": {"url": "file://%s" % source, "sha256": sha}}))
    steps = vm_steps.Steps(None, str(tmp_path / "output.log"))
    cache = str(tmp_path / "cache")
    path = vm_cloud_image.cloud_base_image(recipe, cache, steps)
    assert path == os.path.join(cache, "cloud-%s.img" % sha) and open(path, "rb").read() == data
    assert "download" in steps.timings
    source.unlink()  # from now on, only the cache has it
    assert vm_cloud_image.cloud_base_image(recipe, cache, steps) == path
    with open(path, "ab") as handle:
        handle.write(b"corrupt")  # a corrupt cached file is never used: it is fetched again
    with pytest.raises(vm_steps.BuildError, match="cannot download"):
        vm_cloud_image.cloud_base_image(recipe, cache, steps)
    assert not os.path.exists(path)


# --- finding what is built, without hashing images -------------------------------------------

def _fake_build(folder, recipe, data=b"qcow2 bytes", built_at=None, size=None):
    sha = hashlib.sha256(data).hexdigest()
    (folder / image_naming.image_file_name(recipe.name, sha)).write_bytes(data)
    manifest = image_naming.make_manifest(recipe.name, sha, len(data) if size is None else size,
                                          recipe_sha256=recipe.sha256, base={"kind": "debootstrap"}, packages=[],
                                          built_at=built_at)
    (folder / image_naming.manifest_file_name(recipe.name, sha)).write_bytes(image_naming.manifest_bytes(manifest))
    return str(folder / image_naming.image_file_name(recipe.name, sha)), manifest


def test_find_built_matches_name_and_recipe_hash(tmp_path):
    recipe = vm_recipe.parse_recipe(debian())
    assert vm_build.find_built(str(tmp_path / "missing"), recipe) is None
    assert vm_build.find_built(str(tmp_path), recipe) is None
    other = vm_recipe.parse_recipe(debian(packages=["python3"]))
    _fake_build(tmp_path, other, b"other recipe")
    (tmp_path / "README").write_text("not an image")
    (tmp_path / ("debian-12-%s.manifest.json" % ("1" * 64))).write_text("{broken")
    assert vm_build.find_built(str(tmp_path), recipe) is None
    old = _fake_build(tmp_path, recipe, b"first build", built_at="2024-01-01T00:00:00Z")
    new = _fake_build(tmp_path, recipe, b"second build", built_at="2024-06-01T00:00:00Z")
    assert vm_build.find_built(str(tmp_path), recipe) == new
    os.unlink(new[0])  # a manifest without its image does not count
    assert vm_build.find_built(str(tmp_path), recipe) == old
    _fake_build(tmp_path, vm_recipe.parse_recipe(debian(name="debian-12-big")), b"x")  # a longer name, same prefix
    assert vm_build.find_built(str(tmp_path), recipe) == old


def test_find_built_is_fast_with_big_images(tmp_path):
    recipe = vm_recipe.parse_recipe(debian())
    path, manifest = _fake_build(tmp_path, recipe, b"small", size=5)
    with open(path, "r+b") as handle:  # a 20 GB sparse image: hashing it would take minutes
        handle.truncate(20 * 1024 ** 3)
    manifest["size"] = 20 * 1024 ** 3
    (tmp_path / image_naming.manifest_file_name(recipe.name, manifest["sha256"])).write_bytes(image_naming.manifest_bytes(manifest))
    for index in range(200):
        _fake_build(tmp_path, vm_recipe.parse_recipe(debian(revision=str(index))), b"%d" % index)
    began = time.monotonic()
    assert vm_build.find_built(str(tmp_path), recipe)[0] == path
    assert time.monotonic() - began < 0.5


# --- build helpers ------------------------------------------------------------------------------

def test_steps_log_progress_and_output(tmp_path):
    lines = []
    steps = vm_steps.Steps(ProgressLog(str(tmp_path / "progress.log"), "debian-12"), str(tmp_path / "output.log"),
                           log=lines.append)
    with steps.step("mke2fs", "making the file system"):
        steps.run(["sh", "-c", "echo working; echo more >&2"], "a step")
    with pytest.raises(vm_steps.BuildError) as error:
        with steps.step("setup", "the setup script"):
            steps.run(["sh", "-c", "echo line one; echo the reason >&2; exit 3"], "the setup script")
    assert "the setup script failed (exit 3): line one | the reason" in str(error.value)
    assert "whole output: %s" % (tmp_path / "output.log") in str(error.value)
    with pytest.raises(vm_steps.BuildError, match="did not finish within 1 s"):
        steps.run(["sleep", "5"], "sleeping", timeout=1)
    assert set(steps.timings) == {"mke2fs"}
    progress = (tmp_path / "progress.log").read_text()
    assert "debian-12: mke2fs: making the file system" in progress and "mke2fs: done in" in progress
    assert "setup: failed after" in progress
    assert lines[0] == "mke2fs: making the file system"
    output = (tmp_path / "output.log").read_text()
    assert "$ sh -c 'echo working; echo more >&2'\nworking\nmore\n" in output


def test_base_cache_key_depends_on_the_base_only():
    plain = vm_recipe.parse_recipe(debian(setup="echo 1\n"))
    assert vm_rootfs.base_cache_key(plain) == vm_rootfs.base_cache_key(vm_recipe.parse_recipe(debian(
        setup="echo 2\n", files=[{"path": "/etc/motd", "content": "x"}], user={"name": "ci"})))
    assert vm_rootfs.base_cache_key(plain) != vm_rootfs.base_cache_key(vm_recipe.parse_recipe(debian(packages=["make"])))
    assert vm_rootfs.base_cache_key(plain) != vm_rootfs.base_cache_key(vm_recipe.parse_recipe(debian(
        base={"debootstrap": {"suite": "trixie"}})))


def test_image_fragments_and_names():
    fragments = vm_rootfs.image_fragments("ci")
    script, mode = fragments["/usr/local/sbin/testfleet-ssh-keys"]
    assert mode == 0o755 and "/run/testfleet/authorized_keys/ci" in script and "@USER@" not in script
    assert "opt/org.testfleet" in script
    assert vm_steps.hostname_for("fedora-41.minimal_x") == "fedora-41-minimal-x"
    assert vm_steps.hostname_for("x" * 64) == "x" * 63


def test_remove_tree_and_inside(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    os.symlink("/", str(rootfs / "escape"))
    assert vm_steps.path_inside(str(rootfs), "/etc/motd") == str(rootfs / "etc" / "motd")
    with pytest.raises(vm_steps.BuildError, match="leads out of the image"):
        vm_steps.path_inside(str(rootfs), "/escape/etc/passwd")
    vm_steps.remove_tree(str(rootfs))
    assert not rootfs.exists() and os.path.exists("/etc/passwd")


def test_manifest_of_a_build_is_valid_for_the_store():
    recipe = vm_recipe.parse_recipe(debian(setup="echo secret-free\n"))
    summary = vm_build._recipe_summary(recipe)
    assert summary["setup"] == {"sha256": hashlib.sha256(b"echo secret-free\n").hexdigest()}
    manifest = image_naming.make_manifest("debian-12", "a" * 64, 10, recipe_sha256=recipe.sha256,
                                          base={"kind": "debootstrap"}, packages=["bash=5.2"], recipe=summary,
                                          boot={"mode": "kernel", "kernel": "/boot/vmlinuz-6.1.0-50-amd64"})
    assert json.loads(image_naming.manifest_bytes(manifest))["recipe"]["name"] == "debian-12"
