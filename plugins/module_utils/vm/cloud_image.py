# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Cloud images (Fedora, CentOS...): the verified download of the base image, and its one
customising boot with a cloud-init seed served from 127.0.0.1 that applies the recipe and
powers off (the serial console says :data:`BUILD_OK` or :data:`BUILD_FAILED`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import subprocess
import threading

try:
    import yaml
    HAS_YAML = True
except ImportError:
    yaml = None
    HAS_YAML = False

from ansible.module_utils.urls import open_url

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming
from ansible_collections.testfleet.infra.plugins.module_utils.vm import kvm
from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run
from ansible_collections.testfleet.infra.plugins.module_utils.vm.rootfs import SSH_KEYS_UNIT, image_fragments
from ansible_collections.testfleet.infra.plugins.module_utils.vm.steps import BuildError, locked, output_tail

BUILD_OK = "TESTFLEET-BUILD-OK"
BUILD_FAILED = "TESTFLEET-BUILD-FAILED"


# --- cloud images -------------------------------------------------------------------------------

def download_verified(url, sha256, target, progress=None, timeout=60.0, chunk=1024 * 1024):
    """Download ``url`` to ``target``; keep it only when it hashes to ``sha256``.

    The bytes go to ``target.part`` and are hashed as they arrive; a mismatch removes the part
    and raises BuildError, so ``target`` only ever holds the expected bytes.
    """
    partial = target + ".part"
    digest = hashlib.sha256()
    done = 0
    try:
        with contextlib.closing(open_url(url, timeout=timeout)) as answer, open(partial, "wb") as handle:
            total = int(answer.headers.get("Content-Length") or 0)
            while True:
                data = answer.read(chunk)
                if not data:
                    break
                digest.update(data)
                handle.write(data)
                done += len(data)
                if progress is not None:
                    progress("download", done, total)
    except Exception as exc:  # open_url raises OSError, ValueError and its own ConnectionError
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise BuildError("cannot download %s: %s" % (url, exc))
    if digest.hexdigest() != sha256.lower():
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise BuildError("%s hashes to %s, not to the recipe's sha256 %s: not used" % (url, digest.hexdigest(), sha256))
    files.rename_into_place(partial, target)
    return done


def cloud_base_image(recipe, cache_dir, steps, progress=None):
    """The verified base image of a cloud-image recipe, cached as ``cloud-<sha256>.img``."""
    spec = recipe.base
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, "cloud-%s.img" % spec["sha256"])
    with locked(target + ".lock", what="the cloud image cache"):
        if os.path.exists(target):
            with steps.step("base", "checking the cached %s" % os.path.basename(target)):
                if image_naming.file_sha256(target) == spec["sha256"]:
                    return target
                os.unlink(target)
        with steps.step("download", "downloading %s" % spec["url"]):
            download_verified(spec["url"], spec["sha256"], target, progress=progress)
    return target


def cloud_user_data(recipe):
    """The cloud-init user-data (#cloud-config) that applies ``recipe`` to a cloud image, then
    disables cloud-init and powers the machine off. The setup's outcome is written to the
    serial console (BUILD_OK or BUILD_FAILED), which the build reads."""
    user = recipe.user
    users = [{"name": user["name"], "shell": user["shell"], "lock_passwd": True,
              "ssh_authorized_keys": list(user["ssh_authorized_keys"])}]
    if user["sudo"]:
        users[0]["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    write_files = []
    for path, (content, mode) in sorted(image_fragments(user["name"]).items()):
        write_files.append({"path": path, "content": content, "permissions": "0%o" % mode, "owner": "root:root"})
    for index, spec in enumerate(recipe.data["files"]):
        write_files.append({"path": spec["path"], "encoding": "b64",
                            "content": base64.b64encode(recipe.file_content(index)).decode("ascii"),
                            "permissions": spec["mode"], "owner": "%s:%s" % (spec["owner"], spec["group"]),
                            "defer": True})
    if recipe.data["setup"]:
        write_files.append({"path": "/root/.testfleet-setup", "content": recipe.data["setup"], "permissions": "0700",
                            "owner": "root:root", "defer": True})
    setup = "/root/.testfleet-setup" if recipe.data["setup"] else "true"
    if recipe.data["setup"] and not recipe.data["setup"].startswith("#!"):
        setup = "/bin/sh -e /root/.testfleet-setup"
    finish = (
        "set -u\n"
        "if %s > /var/log/testfleet-setup.log 2>&1; then\n"
        "  rm -f /root/.testfleet-setup /etc/ssh/ssh_host_*\n"
        "  systemctl enable %s\n"
        "  touch /etc/cloud/cloud-init.disabled\n"
        "  : > /etc/machine-id\n"
        "  echo %s > /dev/ttyS0\n"
        "else\n"
        "  echo \"%s $? $(tail -n 5 /var/log/testfleet-setup.log | tr '\\n' ' ')\" > /dev/ttyS0\n"
        "fi\n" % (setup, SSH_KEYS_UNIT, BUILD_OK, BUILD_FAILED))
    document = {
        "users": users,
        "ssh_pwauth": False,
        "package_update": bool(recipe.data["packages"]),
        "packages": list(recipe.data["packages"]),
        "write_files": write_files,
        "runcmd": [["sh", "-c", finish]],
        "power_state": {"mode": "poweroff", "condition": True, "timeout": 30},
    }
    if not HAS_YAML:
        return "#cloud-config\n" + json.dumps(document, indent=1) + "\n"
    return "#cloud-config\n" + yaml.safe_dump(document, default_flow_style=False, sort_keys=False)


class SeedServer:
    """A NoCloud seed (meta-data, user-data) served over HTTP on 127.0.0.1 for one build; the
    guest reaches it as 10.0.2.2 (QEMU's user-mode network). ``url`` is what the guest uses."""

    def __init__(self, user_data, instance_id):
        documents = {"/meta-data": ("instance-id: %s\nlocal-hostname: %s\n" % (instance_id, instance_id)).encode("utf-8"),
                     "/user-data": user_data.encode("utf-8"), "/vendor-data": b""}
        self.requests = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                body = documents.get(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://10.0.2.2:%d/" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def smbios_seed_argument(url):
    """The QEMU argument that points cloud-init's NoCloud datasource at ``url``."""
    return "type=1,serial=ds=nocloud;s=%s" % url.replace(",", ",,")


def customise_cloud_image(recipe, work_image, steps, accel, timeout=3600, qemu=None, memory=2048, cpus=2):
    """Boot ``work_image`` once with the recipe's cloud-init seed; it applies the recipe and
    powers off. Raise BuildError unless the serial console shows BUILD_OK."""
    serial = work_image + ".serial.log"
    with SeedServer(cloud_user_data(recipe), "testfleet-build-%s" % recipe.sha256[:12]) as seed:
        with steps.step("cloud-init", "applying the recipe with cloud-init (%s; the VM powers off when done)" % accel):
            argv = vm_run.qemu_command(work_image, accel=accel, memory=memory, cpus=cpus, serial=serial, qemu=qemu,
                                       smbios=smbios_seed_argument(seed.url))
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
                                      preexec_fn=kvm.die_with_parent)
            except subprocess.TimeoutExpired:
                raise BuildError("the cloud-init build did not power off within %d s: %s" % (timeout, output_tail(serial)))
            text = ""
            with contextlib.suppress(OSError):
                with open(serial, "rb") as handle:
                    text = handle.read().decode("utf-8", "replace")
            if BUILD_OK not in text:
                failed = [line for line in text.splitlines() if BUILD_FAILED in line]
                raise BuildError("the cloud-init build failed (qemu exit %d): %s" % (
                    proc.returncode, failed[-1] if failed else output_tail(serial) or proc.stderr.decode("utf-8", "replace")))
