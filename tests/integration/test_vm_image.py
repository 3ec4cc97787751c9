"""VM images for real: QEMU teardown (fast, an empty disk), and, marked ``vm``, a minimal Debian
image built by vm_image (debootstrap from Debian's mirror), booted under TCG (or KVM where it
works) by vm_instance in a playbook, reached over SSH, and torn down when the job is killed.

The ``vm`` tests take minutes (a cold build debootstraps: ~1.5 min; each boot to SSH under TCG:
~30 s). They need root, network access to the Debian mirror and the Debian packages
qemu-system-x86, qemu-utils, debootstrap, e2fsprogs and openssh-client. Select them with
``-m vm``, leave them out with ``-m "not vm"``. The debootstrapped base is cached in
``TESTFLEET_VM_CACHE_DIR`` (default /var/cache/testfleet/vm-build), so later runs skip debootstrap.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes
from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached

HAS_QEMU = shutil.which("qemu-system-x86_64") is not None and shutil.which("qemu-img") is not None
needs_qemu = pytest.mark.skipif(not HAS_QEMU, reason="needs qemu-system-x86 and qemu-utils")
CACHE_DIR = os.environ.get("TESTFLEET_VM_CACHE_DIR", "/var/cache/testfleet/vm-build")


def _gone(pid, start, within=10.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not vm_processes.process_alive(pid, start):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def blank_image(tmp_path):
    """An empty qcow2 (no OS: QEMU's firmware finds nothing to boot and waits): a real QEMU
    process to start and stop in a fraction of a second."""
    path = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return str(path)


def _helper(collections_path, code, *args):
    """A Python process of its own (as a module would be) running ``code``; its stdout is piped."""
    env = dict(os.environ, PYTHONPATH=collections_path)
    # SIGINT as in a terminal: a test command started in the background inherits it ignored
    prelude = ("import json, signal, sys, time\n"
               "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run\n"
               "from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached\n"
               "from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes\n")
    return subprocess.Popen([sys.executable, "-c", prelude + code] + list(args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


# --- teardown, with a real QEMU -----------------------------------------------------------------

@needs_qemu
def test_vm_runs_on_an_overlay_and_stops_with_its_process_group(tmp_path, blank_image):
    before = image_naming.file_sha256(blank_image), os.stat(blank_image).st_mtime_ns
    run_dir = tmp_path / "run"
    with vm_run.VirtualMachine(blank_image, str(run_dir), accel="tcg", name="blank") as vm:
        pid = vm.proc.pid
        start = vm_processes.process_start_time(pid)
        assert vm.alive() and os.getpgid(pid) == pid  # its own process group
        assert (run_dir / "overlay.qcow2").exists() and (run_dir / "ssh_config").exists()
        info = subprocess.run(["qemu-img", "info", "--output=json", "-U", str(run_dir / "overlay.qcow2")],
                              capture_output=True, text=True, check=True)
        assert json.loads(info.stdout)["backing-filename"] == blank_image
        known = (run_dir / "known_hosts").read_text()
        assert known.startswith("testfleet-vm-blank ssh-ed25519 ")
        assert "Port %d" % vm.target.port in (run_dir / "ssh_config").read_text()
        with pytest.raises(vm_run.VmError, match="did not answer over SSH in time"):
            vm.wait_for_ssh(timeout=1)
    assert _gone(pid, start, within=1)
    assert not run_dir.exists()
    assert (image_naming.file_sha256(blank_image), os.stat(blank_image).st_mtime_ns) == before  # never written


@needs_qemu
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_qemu_goes_when_its_process_is_stopped_or_killed(tmp_path, blank_image, collections_path, how):
    code = ("vm = vm_run.VirtualMachine(sys.argv[1], sys.argv[2], accel='tcg', name='sig')\n"
            "with vm:\n"
            "    print(vm.proc.pid, vm_processes.process_start_time(vm.proc.pid), flush=True)\n"
            "    time.sleep(60)\n")
    proc = _helper(collections_path, code, blank_image, str(tmp_path / "run"))
    pid, start = (int(field) for field in proc.stdout.readline().split())
    assert vm_processes.process_alive(pid, start)
    proc.send_signal(how)
    proc.wait(60)  # QEMU gets SIGTERM, then SIGKILL after 5 s: seconds, more on a loaded machine
    assert _gone(pid, start, within=5), "QEMU survived %s of the process that started it" % how.name
    if how != signal.SIGKILL:  # a handled signal also cleans up
        assert not (tmp_path / "run").exists()


START_DETACHED = ("owner = int(sys.argv[3]) if sys.argv[3] != '0' else None\n"
                  "lifetime = float(sys.argv[4]) if sys.argv[4] != '0' else None\n"
                  "vm = vm_run.VirtualMachine(sys.argv[1], sys.argv[2], accel='tcg', name='kept', keep_run_dir=True)\n"
                  "print(json.dumps(vm_detached.start_detached(vm, owner_pid=owner, lifetime=lifetime)), flush=True)\n")


def _start_detached(collections_path, image, run_dir, owner=0, lifetime=0):
    proc = _helper(collections_path, START_DETACHED, image, str(run_dir), str(owner), str(lifetime))
    out, dummy = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return json.loads(out)


@needs_qemu
def test_a_detached_vm_outlives_its_starter_and_goes_with_its_owner(tmp_path, blank_image, collections_path):
    owner = subprocess.Popen(["sleep", "300"])
    run_dir = tmp_path / "kept"
    try:
        state = _start_detached(collections_path, blank_image, run_dir, owner=owner.pid)
        assert state["owner_pid"] == owner.pid and state["state"] == "running"
        time.sleep(1.5)  # the process that started it has ended; the VM runs on
        assert vm_processes.process_alive(state["qemu_pid"], state["qemu_start"])
        assert vm_detached.read_state(str(run_dir))["running"]
        owner.kill()  # the job's ansible-playbook is killed
        owner.wait()
        assert _gone(state["qemu_pid"], state["qemu_start"], within=10)
        assert _gone(state["keeper_pid"], state["keeper_start"], within=10)
        deadline = time.monotonic() + 5
        while run_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not run_dir.exists()
    finally:
        owner.kill()
        vm_detached.stop_detached(str(run_dir))


@needs_qemu
def test_a_detached_vm_stops_when_asked_or_at_the_end_of_its_lifetime(tmp_path, blank_image, collections_path):
    asked = _start_detached(collections_path, blank_image, tmp_path / "asked")
    timed = _start_detached(collections_path, blank_image, tmp_path / "timed", lifetime=2)
    killed = _start_detached(collections_path, blank_image, tmp_path / "killed")
    try:
        assert vm_detached.stop_detached(str(tmp_path / "asked")) is True
        assert not vm_processes.process_alive(asked["qemu_pid"], asked["qemu_start"])
        assert not (tmp_path / "asked").exists()
        assert _gone(timed["qemu_pid"], timed["qemu_start"], within=10)
        # the keeper killed outright: QEMU goes with it (PR_SET_PDEATHSIG)
        os.kill(killed["keeper_pid"], signal.SIGKILL)
        assert _gone(killed["qemu_pid"], killed["qemu_start"], within=5)
        assert vm_detached.read_state(str(tmp_path / "killed"))["running"] is False
        assert vm_detached.stop_detached(str(tmp_path / "killed")) is False
        assert not (tmp_path / "killed").exists()
    finally:
        for name in ("asked", "timed", "killed"):
            vm_detached.stop_detached(str(tmp_path / name))


# --- a real image, built, booted and reached (slow: marked vm) ---------------------------------

RECIPE = {
    "name": "tftest-debian-12",
    "base": {"debootstrap": {"suite": "bookworm"}},
    "files": [{"path": "/etc/testfleet-motd", "content": "built by the vm test\n"}],
    "setup": "echo setup-ran > /etc/testfleet-setup-ran\n",
    "check": "cat /etc/testfleet-setup-ran /etc/testfleet-motd",
}

JOB = """
- name: A job that boots a VM of the image
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Boot a VM
      testfleet.infra.vm_instance:
        name: "{{ vm_name }}"
        image: "{{ image }}"
        state_dir: "{{ state_dir }}"
        boot_cache_dir: "{{ boot_cache_dir }}"
        kvm_probe_file: "{{ probe_file }}"
        forward_ports: [8080]
        backend: qemu  # plain QEMU even where a libvirtd runs (test_vm_libvirt.py tests libvirt)
      register: vm

    - name: The same again is not a change
      testfleet.infra.vm_instance:
        name: "{{ vm_name }}"
        image: "{{ image }}"
        state_dir: "{{ state_dir }}"
      register: again

    - name: Run a command in the VM with its ssh_config
      ansible.builtin.command:
        argv: [ssh, -F, "{{ vm.ssh_config }}", "{{ vm_name }}", "id -un; cat /etc/testfleet-setup-ran; sudo -n true && echo root-ok"]
      register: over_ssh
      changed_when: false

    - name: Make it a host of the play
      ansible.builtin.add_host:
        name: testvm
        ansible_host: "{{ vm.inventory_vars.ansible_host }}"
        ansible_port: "{{ vm.inventory_vars.ansible_port }}"
        ansible_user: "{{ vm.inventory_vars.ansible_user }}"
        ansible_ssh_private_key_file: "{{ vm.inventory_vars.ansible_ssh_private_key_file }}"
        ansible_ssh_common_args: "{{ vm.inventory_vars.ansible_ssh_common_args }}"
        ansible_connection: ssh

    - name: Results
      ansible.builtin.copy:
        content: "{{ {'vm': vm, 'again': again, 'over_ssh': over_ssh.stdout_lines} | to_json }}"
        dest: "{{ result_file }}"
        mode: "0644"

- name: Ansible in the VM, with raw (the minimal image has no Python)
  hosts: testvm
  gather_facts: false
  tasks:
    - name: A command
      ansible.builtin.raw: uname -r
      register: in_vm
      changed_when: false

    - name: Keep it
      ansible.builtin.copy:
        content: "{{ in_vm.stdout }}"
        dest: "{{ result_file }}.uname"
        mode: "0644"
      delegate_to: localhost
      vars:
        ansible_connection: local

- name: Stop it
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Stop the VM
      testfleet.infra.vm_instance:
        name: "{{ vm_name }}"
        state: absent
        state_dir: "{{ state_dir }}"
      register: stopped
      when: not (keep_running | bool)

    - name: Wait, as a long job would
      ansible.builtin.pause:
        seconds: 600
      when: keep_running | bool
"""


def _playbook(tmp_path, collections_path, text, extra, name="playbook"):
    playbook = tmp_path / ("%s.yml" % name)
    playbook.write_text(text)
    extra_vars = tmp_path / ("%s-vars.json" % name)
    extra_vars.write_text(json.dumps(dict(extra, ansible_python_interpreter=sys.executable)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR="1",
               ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"),
               ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote"))
    return [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "@%s" % extra_vars, str(playbook)], env


@pytest.mark.vm
@pytest.mark.timeout(1800)
@pytest.mark.skipif(os.geteuid() != 0 or not HAS_QEMU or not shutil.which("debootstrap"),
                    reason="needs root, QEMU and debootstrap")
def test_build_boot_and_tear_down_a_real_image(tmp_path, collections_path, run_module):
    output = tmp_path / "images"
    build_args = {"recipe": RECIPE, "output_dir": str(output), "cache_dir": CACHE_DIR, "work_dir": str(tmp_path),
                  "boot_timeout": 600}

    # check mode: a build is needed, nothing is written
    checked = run_module("vm_image", build_args, check_mode=True, diff=True)
    assert checked["changed"] is True and checked["build_needed"] is True and "path" not in checked
    assert not output.exists()

    # the build, through ansible-playbook
    build = ("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
             "    - testfleet.infra.vm_image:\n"
             + "".join("        %s: \"{{ args.%s }}\"\n" % (key, key) for key in build_args) +
             "      register: built\n"
             "    - ansible.builtin.copy: {content: '{{ built | to_json }}', dest: '{{ out }}', mode: '0644'}\n")
    argv, env = _playbook(tmp_path, collections_path, build, {"args": build_args, "out": str(tmp_path / "built.json")},
                          name="build")
    began = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1500, check=False)
    build_seconds = time.monotonic() - began
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    built = json.loads((tmp_path / "built.json").read_text())
    assert built["changed"] is True
    path, manifest = built["path"], built["manifest"]
    ref = image_naming.parse_image_file_name(os.path.basename(path))
    assert ref.name == "tftest-debian-12" and image_naming.file_sha256(path) == ref.sha256 == manifest["sha256"]
    assert os.path.basename(built["manifest_path"]) == image_naming.manifest_file_name(ref.name, ref.sha256)
    assert manifest["recipe_sha256"] == built["recipe_sha256"] and manifest["size"] == os.path.getsize(path)
    assert manifest["base"]["kind"] == "debootstrap" and manifest["base"]["suite"] == "bookworm"
    assert any(package.startswith("openssh-server=") for package in manifest["packages"])
    assert manifest["boot"]["mode"] == "kernel" and manifest["boot"]["kernel"].startswith("/boot/vmlinuz-")
    assert manifest["boot_check"]["accel"] in ("kvm", "tcg") and manifest["boot_check"]["boot_to_ssh_s"] > 0
    assert set(built["timings"]) >= {"configure", "setup", "mke2fs", "qcow2", "boot-check", "hash"}
    progress = open(built["progress_log"]).read()
    assert "boot-check: done in" in progress and "built %s" % os.path.basename(path) in progress
    # nothing left but the image, its manifest and the logs
    assert sorted(os.listdir(str(output))) == sorted([os.path.basename(path), os.path.basename(built["manifest_path"]),
                                                      "logs"] + [".tftest-debian-12.lock"])

    # unchanged inputs: no build, found in well under a second (manifests only, no hashing)
    began = time.monotonic()
    again = run_module("vm_image", build_args)
    unchanged_seconds = time.monotonic() - began
    assert again["changed"] is False and again["path"] == path and again["sha256"] == ref.sha256
    assert unchanged_seconds < 1.0
    assert run_module("vm_image", build_args, check_mode=True)["changed"] is False
    other = run_module("vm_image", dict(build_args, recipe=dict(RECIPE, setup="echo other\n")), check_mode=True)
    assert other["changed"] is True and other["recipe_sha256"] != built["recipe_sha256"]

    # a job boots it, reaches it over SSH and with Ansible, and stops it
    state_dir = tmp_path / "vms"
    job_vars = {"image": path, "state_dir": str(state_dir), "boot_cache_dir": str(tmp_path / "boot"),
                "probe_file": os.path.join(CACHE_DIR, "kvm-probe.json"), "vm_name": "job-1",
                "result_file": str(tmp_path / "job.json"), "keep_running": False}
    argv, env = _playbook(tmp_path, collections_path, JOB, job_vars, name="job")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "job.json").read_text())
    vm = result["vm"]
    assert vm["changed"] is True and vm["state"] == "running" and vm["boot_to_ssh_s"] > 0
    assert vm["backend"] == "qemu" and vm["backend_reason"] == "qemu asked for"
    assert result["again"]["changed"] is False
    assert result["over_ssh"] == ["tester", "setup-ran", "root-ok"]
    assert (tmp_path / "job.json.uname").read_text().strip() == manifest["boot_check"]["kernel_release"]
    assert set(vm["forwarded_ports"]) == {"8080"}
    assert not vm_processes.process_alive(vm["qemu_pid"]) and not (state_dir / "job-1").exists()
    assert image_naming.file_sha256(path) == ref.sha256  # the image was never written

    # a job killed while its VM runs: the VM goes with it
    job_vars.update(vm_name="job-2", keep_running=True, result_file=str(tmp_path / "job2.json"))
    argv, env = _playbook(tmp_path, collections_path, JOB, job_vars, name="job2")
    job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (tmp_path / "job2.json.uname").exists():
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before its VM was up"
            time.sleep(1)
        state = vm_detached.read_state(str(state_dir / "job-2"))
        assert state["running"] and vm_processes.process_alive(state["qemu_pid"], state["qemu_start"])
        os.killpg(job.pid, signal.SIGKILL)  # as a worker cancels a job it has to
        job.wait(30)
        assert _gone(state["qemu_pid"], state["qemu_start"], within=15)
        assert _gone(state["keeper_pid"], state["keeper_start"], within=15)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        vm_detached.stop_detached(str(state_dir / "job-2"))
    print("\nvm test: build %.1f s (base %s), unchanged %.3f s, boot to SSH %.1f s in the build, %.1f s in the job"
          % (build_seconds, "cached" if manifest["base"].get("cached") else "debootstrapped", unchanged_seconds,
             manifest["boot_check"]["boot_to_ssh_s"], vm["boot_to_ssh_s"]))
