"""The one KVM probe: what vm_instance/vm_image use, and the script the worker role runs."""

import json
import subprocess
import sys

from ansible_collections.testfleet.infra.plugins.module_utils.vm import kvm


def test_a_missing_qemu_is_a_reason_not_a_crash(tmp_path):
    assert kvm.probe(str(tmp_path / "vmlinuz"), qemu="no-such-qemu", accel="tcg") == (
        False, "no-such-qemu is not installed")


def test_the_role_runs_the_file_as_a_script(tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"\0" * 64)
    out = subprocess.run([sys.executable, kvm.__file__, "--kernel", str(kernel), "--qemu", "no-such-qemu",
                          "--accel", "tcg", "--timeout", "5"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == {"kvm": False, "reason": "no-such-qemu is not installed", "kernel": str(kernel)}
