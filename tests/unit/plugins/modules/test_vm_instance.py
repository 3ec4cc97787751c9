"""vm_instance without booting: the backend option (choice, check mode, diff, failures that say
how to fix them), idempotence against a recorded running VM, and state=absent.
(Real boots: tests/integration/test_vm_image.py for QEMU, tests/integration/test_vm_libvirt.py.)"""

import json
import os

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.vm import libvirt_domain as vm_libvirt
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes
from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "images" / "some.qcow2"
    path.parent.mkdir()
    path.write_bytes(b"not booted in these tests")
    return str(path)


def _no_daemon_uri(tmp_path):
    return "qemu+unix:///system?socket=%s" % (tmp_path / "no-libvirtd-here")


def _args(tmp_path, image, **more):
    return dict(dict(name="job-1", image=image, state_dir=str(tmp_path / "vms")), **more)


def test_check_mode_with_qemu_asked_for(run_module, tmp_path, image):
    result = run_module("vm_instance", _args(tmp_path, image, backend="qemu"), check_mode=True, diff=True)
    assert result["changed"] is True and result["backend"] == "qemu" and result["backend_reason"] == "qemu asked for"
    assert result["diff"] == {"before": {"state": "absent", "image": None, "backend": None},
                              "after": {"state": "running", "image": image, "backend": "qemu"}}
    assert not (tmp_path / "vms").exists()


def test_auto_without_a_libvirtd_is_plain_qemu(run_module, tmp_path, image):
    result = run_module("vm_instance", _args(tmp_path, image, libvirt_uri=_no_daemon_uri(tmp_path)), check_mode=True)
    assert "failed" not in result, result
    assert result["backend"] == "qemu" and result["backend_reason"].startswith("auto: ")
    assert "plain QEMU" in result["backend_reason"]


def test_libvirt_asked_for_without_a_libvirtd_fails_saying_how_to_fix_it(run_module, tmp_path, image):
    for check_mode in (True, False):
        result = run_module("vm_instance", _args(tmp_path, image, backend="libvirt",
                                                 libvirt_uri=_no_daemon_uri(tmp_path)), check_mode=check_mode)
        assert result["failed"] is True and result["changed"] is False
        assert result["msg"].startswith("backend libvirt: ")
        if vm_libvirt.libvirt is None:
            assert "pip install libvirt-python" in result["msg"]
        else:
            assert "no libvirtd answers on qemu+unix:///system" in result["msg"]
            assert "libvirtd -d" in result["msg"] and "backend auto" in result["msg"]
    assert not (tmp_path / "vms").exists()


def test_a_remote_libvirt_uri_is_refused(run_module, tmp_path, image):
    result = run_module("vm_instance", _args(tmp_path, image, backend="libvirt", libvirt_uri="qemu+ssh://h/system"),
                        check_mode=True)
    assert result["failed"] is True and "local QEMU libvirtd" in result["msg"]


def _record_running_vm(tmp_path, image, backend):
    """instance.json of a VM that runs (its 'keeper' is this test process)."""
    run_dir = tmp_path / "vms" / "job-1"
    run_dir.mkdir(parents=True)
    state = {"name": "job-1", "image": image, "run_dir": str(run_dir), "accel": "tcg", "accel_reason": "tcg asked for",
             "qemu_pid": None, "qemu_start": None, "keeper_pid": os.getpid(),
             "keeper_start": vm_processes.process_start_time(os.getpid()), "state": "running", "forwards": {},
             "console": str(run_dir / "serial.log"), "boot": "kernel", "backend": backend,
             "backend_reason": "auto: libvirtd 9.0.0 answers on qemu:///system",
             "ssh": {"host": "127.0.0.1", "port": 40022, "user": "tester", "private_key_file": str(run_dir / "id_ed25519"),
                     "known_hosts_file": str(run_dir / "known_hosts"), "host_key_alias": "testfleet-vm-job-1"}}
    if backend == "libvirt":
        state["libvirt"] = {"uri": "qemu:///system", "domain": "testfleet-job-1-12345678", "uuid": "u", "start_s": 0.5}
    (run_dir / vm_detached.STATE_FILE).write_text(json.dumps(state))
    return run_dir


def test_a_running_vm_is_no_change_unless_another_backend_is_asked_for(run_module, tmp_path, image):
    _record_running_vm(tmp_path, image, "libvirt")
    for backend in ("auto", "libvirt"):
        result = run_module("vm_instance", _args(tmp_path, image, backend=backend), check_mode=True)
        assert result["changed"] is False and result["backend"] == "libvirt", result
        assert result["libvirt"]["domain"] == "testfleet-job-1-12345678"
        assert result["ssh"]["port"] == 40022 and result["boot_to_ssh_s"] is None
    result = run_module("vm_instance", _args(tmp_path, image, backend="qemu"), check_mode=True, diff=True)
    assert result["changed"] is True and result["backend"] == "qemu"
    assert result["diff"]["before"] == {"state": "running", "image": image, "backend": "libvirt"}


def test_absent(run_module, tmp_path, image):
    result = run_module("vm_instance", dict(name="job-1", state="absent", state_dir=str(tmp_path / "vms")), diff=True)
    assert result["changed"] is False and result["state"] == "absent"
    run_dir = tmp_path / "vms" / "job-1"
    run_dir.mkdir(parents=True)
    (run_dir / "serial.log").write_text("a VM that ended by itself keeps its console log\n")
    result = run_module("vm_instance", dict(name="job-1", state="absent", state_dir=str(tmp_path / "vms")),
                        check_mode=True, diff=True)
    assert result["changed"] is True and result["diff"]["before"] == {"state": "stopped"} and run_dir.exists()
    result = run_module("vm_instance", dict(name="job-1", state="absent", state_dir=str(tmp_path / "vms")))
    assert result["changed"] is True and not run_dir.exists()
