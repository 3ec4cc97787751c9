"""vm_run: QEMU's command line, the choice of KVM or TCG, SSH settings, process bookkeeping.
(Booting real VMs: tests/integration/test_vm_image.py.)"""

import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes
from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached


def test_qemu_command_for_tcg_with_a_kernel_and_forwards():
    argv = vm_run.qemu_command("/vms/a,b/overlay.qcow2", accel="tcg", memory=2048, cpus=4, kernel="/boot/k",
                               initrd="/boot/i", cmdline="root=/dev/vda rw", serial="/vms/serial.log", ssh_port=40022,
                               forwards=[(40080, 80)], fw_cfg={vm_run.FW_CFG_AUTHORIZED_KEYS: "/vms/id.pub"})
    text = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-accel tcg -cpu max" in text and "-m 2048 -smp 4" in text
    assert "file=/vms/a,,b/overlay.qcow2,if=virtio,format=qcow2" in text  # a comma in a path is escaped
    assert "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:80" in text
    assert "-kernel /boot/k -initrd /boot/i -append root=/dev/vda rw" in text
    assert "-fw_cfg name=opt/org.testfleet/authorized_keys,file=/vms/id.pub" in text
    assert "-serial file:/vms/serial.log" in text
    assert "-display none" in text and "-nodefaults" in text


def test_qemu_command_for_kvm_from_disk():
    argv = vm_run.qemu_command("disk.qcow2", accel="kvm", qemu="/usr/local/bin/qemu", smbios="type=1,serial=x")
    text = " ".join(argv)
    assert argv[0] == "/usr/local/bin/qemu" and "-accel kvm -cpu host" in text
    assert "-kernel" not in text and "hostfwd" not in text
    assert "-smbios type=1,serial=x" in text and "-serial null" in text
    with pytest.raises(ValueError, match="accel must be kvm or tcg"):
        vm_run.qemu_command("disk.qcow2", accel="auto")


def test_choose_accel(tmp_path):
    assert vm_run.choose_accel("tcg") == ("tcg", "tcg asked for")
    assert vm_run.choose_accel("kvm") == ("kvm", "kvm asked for")
    with pytest.raises(ValueError):
        vm_run.choose_accel("xen")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        accel, reason = vm_run.choose_accel("auto", probe_file=str(tmp_path / "probe.json"))
        assert accel == "tcg" and "/dev/kvm" in reason
        return
    # a kept probe result (the worker role's kvm-probe.json has this shape) decides, without probing
    probe = tmp_path / "kvm-probe.json"
    probe.write_text(json.dumps({"kvm": False, "reason": "a KVM guest did not boot within 30 s: it hangs"}))
    assert vm_run.choose_accel("auto", probe_file=str(probe)) == (
        "tcg", "KVM probe (%s): a KVM guest did not boot within 30 s: it hangs" % probe)
    probe.write_text(json.dumps({"kvm": True, "reason": "booted"}))
    assert vm_run.choose_accel("auto", probe_file=str(probe))[0] == "kvm"


def test_probe_result_is_kept(tmp_path):
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm: auto is TCG without probing")
    probe = tmp_path / "sub" / "kvm-probe.json"
    kernel = tmp_path / "not-a-kernel"
    kernel.write_bytes(b"\0" * 4096)
    began = time.monotonic()
    accel, reason = vm_run.choose_accel("auto", kernel=str(kernel), probe_file=str(probe), probe_timeout=5)
    assert accel == "tcg" and reason.startswith("KVM probe: ")  # nothing boots from zeros
    assert time.monotonic() - began < 15
    saved = json.loads(probe.read_text())
    assert saved["kvm"] is False and saved["kernel"] == str(kernel)


def test_ssh_target_settings():
    target = vm_run.SshTarget(40022, "tester", "/vms/a/id_ed25519", "/vms/a/known_hosts", "testfleet-vm-a")
    argv = target.argv("make check")
    assert argv[:3] == ["ssh", "-F", "/dev/null"] and argv[-3:] == ["tester@127.0.0.1", "--", "make check"]
    assert "StrictHostKeyChecking=yes" in argv and "HostKeyAlias=testfleet-vm-a" in argv and "BatchMode=yes" in argv
    assert argv[argv.index("-p") + 1] == "40022"
    config = target.config_text("a")
    assert config.startswith("Host a\n  HostName 127.0.0.1\n  Port 40022\n  User tester\n")
    assert "UserKnownHostsFile /vms/a/known_hosts" in config and "StrictHostKeyChecking yes" in config
    variables = target.ansible_vars()
    assert variables["ansible_port"] == 40022 and variables["ansible_user"] == "tester"
    assert "-o HostKeyAlias=testfleet-vm-a" in variables["ansible_ssh_common_args"]
    assert not target.banner(timeout=0.5)  # nobody listens


def test_banner_recognises_an_ssh_server():
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def greet():
        connection, dummy = listener.accept()
        connection.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        connection.close()
    threading.Thread(target=greet, daemon=True).start()
    assert vm_run.SshTarget(listener.getsockname()[1], "u", "k", "h", "a").banner()
    listener.close()


def test_process_identity():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        start = vm_processes.process_start_time(proc.pid)
        assert start is not None
        assert vm_processes.process_alive(proc.pid) and vm_processes.process_alive(proc.pid, start)
        assert not vm_processes.process_alive(proc.pid, start + 1)  # another process that got the same pid
    finally:
        proc.kill()
        proc.wait()
    assert not vm_processes.process_alive(proc.pid, start)
    assert vm_processes.process_start_time(2 ** 22 + 1) is None and not vm_processes.process_alive(None)


def test_find_playbook_pid_takes_the_outermost():
    code = ("import os, subprocess, sys, time\n"
            "inner = subprocess.Popen([%r, '-c', 'import time; time.sleep(30)'])\n" % sys.executable +
            "print(inner.pid, flush=True)\n"
            "time.sleep(30)\n")
    # argv[0] "ansible-playbook", as the real one: its forks (one per task) are named the same
    outer = subprocess.Popen(["ansible-playbook", "-c", code], executable=sys.executable, stdout=subprocess.PIPE)
    inner = None
    try:
        inner = int(outer.stdout.readline())
        assert vm_processes.find_playbook_pid(start=inner) == outer.pid
        assert vm_processes.find_playbook_pid(start=os.getpid()) != outer.pid  # not an ancestor of this process
    finally:
        if inner:
            os.kill(inner, 9)
        outer.kill()
        outer.wait()


def test_free_port_and_names(tmp_path):
    port = vm_run.free_port()
    assert 1024 < port < 65536
    with pytest.raises(vm_run.VmError, match="a VM name"):
        vm_run.instance_dir(str(tmp_path), "../escape")
    assert vm_run.instance_dir(str(tmp_path), "job-1") == str(tmp_path / "job-1")
    with pytest.raises(vm_run.VmError, match="a VM name"):
        vm_run.VirtualMachine("x.qcow2", str(tmp_path), name="has space")


def test_boot_spec(tmp_path):
    assert vm_run.boot_spec("x.qcow2") == {"mode": "disk"}
    assert vm_run.boot_spec("x.qcow2", {"boot": {"mode": "disk"}}) == {"mode": "disk"}
    assert vm_run.boot_spec("x.qcow2", kernel="/k", initrd="/i") == {
        "mode": "kernel", "kernel_file": "/k", "initrd_file": "/i", "cmdline": "root=/dev/vda rw console=ttyS0"}
    with pytest.raises(vm_run.VmError, match="boot cache directory"):
        vm_run.boot_spec("x.qcow2", {"boot": {"mode": "kernel", "kernel": "/boot/vmlinuz"}})


def test_read_state_and_stop_detached_without_a_vm(tmp_path):
    run_dir = tmp_path / "vm"
    assert vm_detached.read_state(str(run_dir)) is None
    assert vm_detached.stop_detached(str(run_dir)) is False
    run_dir.mkdir()
    # a state whose processes are gone (or whose pids now name other processes) signals nobody
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (run_dir / vm_detached.STATE_FILE).write_text(json.dumps({
            "state": "running", "keeper_pid": sleeper.pid, "keeper_start": 1, "qemu_pid": sleeper.pid,
            "qemu_start": 1}))
        state = vm_detached.read_state(str(run_dir))
        assert state["running"] is False
        assert vm_detached.stop_detached(str(run_dir), timeout=1) is False
        assert sleeper.poll() is None and not run_dir.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
