"""playbooks/jobs/image-refresh.yml and image-prune.yml run by ansible-playbook as a worker runs them:
the job's fields as extra vars, settings from the config file, the fake GitHub, the real broker and
a real S3 server (moto_server).

The image is not built here (debootstrap and a boot take minutes: `scripts/test vm` does that):
an image of the recipe is put in the build directory beforehand, which is exactly what
`vm_image` finds when the inputs are unchanged (job arg `rebuild: false`). Everything after the
build runs for real: the upload to S3 and its verification, the pull request on the fake GitHub,
the scan that queues the test jobs on the broker, and the prune.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import boto3
import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import amqp

from ansible_collections.testfleet.infra.plugins.module_utils.images import store as images
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

from ansible_collections.testfleet.infra.plugins.module_utils import statuses

from ansible_collections.testfleet.infra.plugins.module_utils.vm import recipe as vm_recipe
from ansible_collections.testfleet.infra.plugins.module_utils.topology import ensure_queue

REPO = "org/proj"
REFS = ".testfleet/images.yml"
OLD = "debian-12-" + "a" * 64
FEDORA = "fedora-41-" + "f" * 64
BUCKET = "ci-images"
S3_SECRET = "moto-secret-not-for-logs-4711"
JOBS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "playbooks", "jobs")


def run_playbook(tmp_path, collections_path, name, job, config, check=False):
    extra_vars = tmp_path / ("%s.json" % job["id"])
    extra_vars.write_text(json.dumps(dict(job, testfleet_config=str(config))))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"), ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote"))
    env.pop("TESTFLEET_CONFIG", None)
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
               "-e", "@%s" % extra_vars, os.path.join(JOBS, name)] + (["--check"] if check else [])
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def put_built_image(recipe_file, build_dir, payload):
    """An image of the recipe in the build directory, as vm_image leaves one: <name>-<sha256>.qcow2
    and its manifest (with the recipe's hash)."""
    recipe = vm_recipe.load_recipe(str(recipe_file))
    sha256 = hashlib.sha256(payload).hexdigest()
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / image_naming.image_file_name(recipe.name, sha256)).write_bytes(payload)
    manifest = image_naming.make_manifest(recipe.name, sha256, len(payload), recipe.sha256,
                                          {"kind": "debootstrap", "suite": "bookworm"}, ["bash 5.2.15-2+b2", "python3 3.11.2-1"])
    (build_dir / image_naming.manifest_file_name(recipe.name, sha256)).write_bytes(image_naming.manifest_bytes(manifest))
    return "%s-%s" % (recipe.name, sha256)


def test_the_image_refresh_and_prune_jobs(tmp_path, collections_path, amqp_options, amqp_settings, fake_github,
                                          moto_server, topology, broker):
    queue = topology["queues"][0]
    ensure_queue(broker.channel(), topology, queue)
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key=S3_SECRET)
    s3.create_bucket(Bucket=BUCKET)
    secret_file = tmp_path / "s3-secret"
    secret_file.write_text(S3_SECRET)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "debian-12.yml").write_text("name: debian-12\nbase:\n  debootstrap:\n    suite: bookworm\n"
                                           "packages: [python3]\n")
    new = put_built_image(recipes / "debian-12.yml", tmp_path / "build", os.urandom(256 * 1024))
    testmap = tmp_path / "testmap.yml"
    testmap.write_text("defaults: {queue: %s}\nrepos:\n  %s:\n    heads: false\n    branches:\n"
                       "      main: [debian-12/default, {context: unit/debian, image: debian-12}, fedora-41/default]\n"
                       % (queue, REPO))
    token_file = tmp_path / "github-token"
    token_file.write_text(fake_github.token)
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({
        "amqp": amqp_options, "forge": {"api_url": fake_github.url, "token_file": str(token_file)},
        "testmap": str(testmap), "topology": topology,
        "images": {"store_url": "s3://%s/images" % BUCKET, "endpoint_url": moto_server, "region": "us-east-1",
                   "access_key": "testing", "secret_key_file": str(secret_file), "recipes_dir": str(recipes),
                   "build_dir": str(tmp_path / "build"), "build_cache_dir": str(tmp_path / "build-cache"),
                   "cache_dir": str(tmp_path / "cache")}}))
    fake_github.add_repo(REPO)
    fake_github.add_commit(REPO, {REFS: "# test images\ndebian-12: %s\nfedora-41: %s\n" % (OLD, FEDORA)}, branch="main")
    job = {"version": 1, "id": "refresh-1", "kind": "image-refresh", "repo": REPO,
           "args": {"image": "debian-12", "rebuild": False, "trigger": "weekly"}}

    first = run_playbook(tmp_path, collections_path, "image-refresh.yml", job, config)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output
    assert S3_SECRET not in output and fake_github.token not in output
    # published and verified in the store
    stored = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert stored == ["images/%s.manifest.json" % new, "images/%s.qcow2" % new]
    # a pull request that changes the one line
    [pull] = fake_github.pulls(REPO)
    assert (pull["number"], pull["head"]["ref"], pull["base"]["ref"]) == (1, "testfleet/image-debian-12", "main")
    assert fake_github.file_at(REPO, pull["head"]["ref"], REFS).decode() == \
        "# test images\ndebian-12: %s\nfedora-41: %s\n" % (new, FEDORA)
    assert "weekly: %s (already built, published); pull request #1 opened" % new in first.stdout
    # the scan queued the test jobs of the pull request's head: its retest approved the bot's commit
    head = pull["head"]["sha"]
    queued = dict((name, statuses.parse(fake_github.statuses(REPO, head, name)[0]))
                  for name in ("debian-12/default", "unit/debian", "fedora-41/default"))
    assert all(parsed.kind == "queued" and parsed.attempt == 1 for parsed in queued.values()), queued
    channel = broker.channel()
    published = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        published.append((json.loads(body)["context"], json.loads(body)["sha"]))
    assert sorted(published) == sorted([("debian-12/default", head), ("unit/debian", head),
                                        ("fedora-41/default", head)])

    # the same job delivered again: nothing more is published, posted or queued
    posts = len([r for r in fake_github.requests if r["method"] != "GET"])
    again = run_playbook(tmp_path, collections_path, "image-refresh.yml", job, config)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already in the store); pull request #1 unchanged, queued []" in again.stdout, again.stdout
    assert len([r for r in fake_github.requests if r["method"] != "GET"]) == posts
    assert channel.basic_get(queue)[0] is None

    # prune: an unreferenced image in the store goes; the one the pull request references stays
    other = put_built_image(recipes / "debian-12.yml", tmp_path / "other-build", os.urandom(64 * 1024))
    store = images.open_store("s3://%s/images" % BUCKET, endpoint_url=moto_server, region="us-east-1",
                              access_key="testing", secret_key=S3_SECRET)
    images.publish_image(store, str(tmp_path / "other-build" / ("%s.qcow2" % other)))
    prune = {"version": 1, "id": "prune-1", "kind": "image-prune", "repo": REPO,
             "args": {"older_than_days": 0, "cache": False}}
    checked = run_playbook(tmp_path, collections_path, "image-prune.yml", prune, config, check=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "would remove ['%s'] from the store" % other in checked.stdout, checked.stdout
    assert len(s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == 4
    pruned = run_playbook(tmp_path, collections_path, "image-prune.yml", prune, config)
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert "removed ['%s'] from the store" % other in pruned.stdout
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]) == stored
    assert S3_SECRET not in checked.stdout + pruned.stdout + pruned.stderr


@pytest.mark.vm
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("qemu-system-x86_64") or not shutil.which("debootstrap"),
                    reason="needs root, QEMU and debootstrap")
def test_a_refresh_builds_boots_and_proposes_a_real_image(tmp_path, collections_path, amqp_options, amqp_settings,
                                                          fake_github, topology):
    """The whole refresh for real: debootstrap with today's packages, the boot check over SSH,
    the publication to a directory store, the pull request and the queued contexts."""
    queue = topology["queues"][0]
    connection = amqp.connect(amqp_settings)  # not held open through the build: no heartbeats
    ensure_queue(connection.channel(), topology, queue)
    connection.close()
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "debian-12.yml").write_text("name: debian-12\nbase:\n  debootstrap:\n    suite: bookworm\n"
                                           "check: cat /etc/debian_version\n")
    testmap = tmp_path / "testmap.yml"
    testmap.write_text("defaults: {queue: %s}\nrepos:\n  %s:\n    heads: false\n    branches:\n"
                       "      main: [debian-12/default]\n" % (queue, REPO))
    token_file = tmp_path / "github-token"
    token_file.write_text(fake_github.token)
    store = tmp_path / "store"
    config = tmp_path / "config.yml"
    config.write_text(json.dumps({
        "amqp": amqp_options, "forge": {"api_url": fake_github.url, "token_file": str(token_file)},
        "testmap": str(testmap), "topology": topology,
        "images": {"store_url": "file://%s" % store, "recipes_dir": str(recipes), "build_dir": str(tmp_path / "build"),
                   "build_cache_dir": os.environ.get("TESTFLEET_VM_CACHE_DIR", "/var/cache/testfleet/vm-build")}}))
    fake_github.add_repo(REPO)
    fake_github.add_commit(REPO, {REFS: "debian-12: %s\n" % OLD}, branch="main")
    job = {"version": 1, "id": "refresh-real", "kind": "image-refresh", "repo": REPO, "args": {"image": "debian-12"}}
    began = time.monotonic()
    result = run_playbook(tmp_path, collections_path, "image-refresh.yml", job, config)
    assert result.returncode == 0, result.stdout + result.stderr
    [qcow2] = [name for name in os.listdir(store) if name.endswith(".qcow2")]
    ref = image_naming.parse_image_file_name(qcow2)
    assert image_naming.file_sha256(str(store / qcow2)) == ref.sha256
    assert "(built, published); pull request #1 opened" in result.stdout
    [pull] = fake_github.pulls(REPO)
    assert fake_github.file_at(REPO, pull["head"]["ref"], REFS).decode() == "debian-12: debian-12-%s\n" % ref.sha256
    parsed = statuses.parse(fake_github.statuses(REPO, pull["head"]["sha"], "debian-12/default")[0])
    assert parsed.kind == "queued"
    print("refresh took %.0f s" % (time.monotonic() - began))
