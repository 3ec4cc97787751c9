"""VMs in jobs through libvirt, for real (all marked ``vm``: run by ``scripts/test vm``, not by CI).

A libvirtd on qemu:///system is needed: the one that runs, else the fixture ``libvirtd`` starts
one (``virtlogd -d`` and ``libvirtd -d``, unix sockets only, no systemd) and stops it afterwards.
They need root, the Debian packages libvirt-daemon-system, qemu-system-x86, qemu-utils and
openssh-client, and the Python packages libvirt-python and lxml (requirements.txt). On a host
where the user of /etc/libvirt/qemu.conf cannot open /dev/kvm, every domain start takes ~45 s
(scripts/bootstrap --for-tests sets that user to root, see docs/images.md).

- A blank disk (no OS, fast): the domain is transient, goes when its keeper is killed with
  SIGKILL (autodestroy), when asked, and when libvirtd restarts under it.
- A minimal Debian image made by vm_image (built once into ``TESTFLEET_VM_CACHE_DIR/images``,
  default /var/cache/testfleet/vm-build/images, and found there unchanged by later runs; the
  debootstrapped base is shared with test_vm_image.py): booted by vm_instance with
  ``backend: libvirt`` in a playbook, reached over SSH, looked at with community.libvirt.virt,
  stopped with ``state: absent``; then booted by a job that is killed with SIGKILL: the domain goes.
  The image is unchanged (SHA-256) throughout.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

from ansible_collections.testfleet.infra.plugins.module_utils.vm import libvirt_domain as vm_libvirt
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes
from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached

URI = "qemu:///system"
CACHE_DIR = os.environ.get("TESTFLEET_VM_CACHE_DIR", "/var/cache/testfleet/vm-build")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")
# the recipe of test_vm_image.py: same base, so the debootstrapped tarball is shared
RECIPE = {
    "name": "tftest-debian-12",
    "base": {"debootstrap": {"suite": "bookworm"}},
    "files": [{"path": "/etc/testfleet-motd", "content": "built by the vm test\n"}],
    "setup": "echo setup-ran > /etc/testfleet-setup-ran\n",
    "check": "cat /etc/testfleet-setup-ran /etc/testfleet-motd",
}

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (libvirtd on qemu:///system)"),
    pytest.mark.skipif(vm_libvirt.libvirt is None, reason="needs the libvirt Python binding (libvirt-python)"),
    pytest.mark.skipif(not (shutil.which("qemu-system-x86_64") and shutil.which("qemu-img")),
                       reason="needs qemu-system-x86 and qemu-utils"),
]


def _program(name):
    for folder in SBIN:
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def _read_pid(path):
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _wait(predicate, within, interval=0.2):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class Daemons:
    """virtlogd and libvirtd started by the tests (pid files in ``folder``), stopped by them."""

    def __init__(self, folder):
        self.folder = folder
        self.started = {}

    def start(self, name, argv_extra=()):
        pid_file = os.path.join(self.folder, name + ".pid")
        program = _program(name)
        subprocess.run([program, "-d", "-p", pid_file] + list(argv_extra), check=True, timeout=60)
        assert _wait(lambda: _read_pid(pid_file) is not None, 10), "%s wrote no pid file" % name
        pid = _read_pid(pid_file)
        self.started[name] = (pid, vm_processes.process_start_time(pid))

    def stop(self, name, timeout=30, how=signal.SIGTERM):
        pid, start = self.started.pop(name)
        if vm_processes.process_alive(pid, start):
            os.kill(pid, how)
            if not _wait(lambda: not vm_processes.process_alive(pid, start), timeout):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):  # the daemon removes it as it ends
            os.unlink(os.path.join(self.folder, name + ".pid"))

    def restart_libvirtd(self, how=signal.SIGTERM):
        self.stop("libvirtd", how=how)
        self.start("libvirtd")
        assert _wait(lambda: vm_libvirt.probe_libvirt(URI)[0], 60, 0.5), vm_libvirt.probe_libvirt(URI)[1]


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory):
    """A libvirtd answering on qemu:///system: ``.started`` says whether this fixture started it
    (then ``.daemons.restart_libvirtd()`` may restart it). Module-scoped: while it runs,
    vm_instance's ``backend: auto`` anywhere on this host picks libvirt, so it runs no longer
    than these tests."""
    works, reason = vm_libvirt.probe_libvirt(URI)
    daemons = Daemons(str(tmp_path_factory.mktemp("libvirtd")))
    if not works:
        if not (_program("libvirtd") and _program("virtlogd")):
            pytest.skip("no libvirtd answers on %s and libvirt-daemon-system is not installed (%s)" % (URI, reason))
        if not os.path.exists("/run/libvirt/virtlogd-sock"):  # libvirtd hands QEMU's output to virtlogd
            daemons.start("virtlogd")
        daemons.start("libvirtd")
        # the first connection waits for libvirtd to probe QEMU's capabilities (~10 s)
        assert _wait(lambda: vm_libvirt.probe_libvirt(URI)[0], 90, 0.5), vm_libvirt.probe_libvirt(URI)[1]
    yield types.SimpleNamespace(uri=URI, started="libvirtd" in daemons.started, daemons=daemons)
    for name in ("libvirtd", "virtlogd"):
        if name in daemons.started:
            daemons.stop(name)


def _domain(uuid):
    """The running domain of ``uuid``, or None."""
    conn = vm_libvirt.libvirt.open(URI)
    try:
        domain = conn.lookupByUUIDString(uuid)
        return {"name": domain.name(), "active": bool(domain.isActive()), "persistent": bool(domain.isPersistent())}
    except vm_libvirt.libvirt.libvirtError:
        return None
    finally:
        conn.close()


# --- a blank disk: teardown -------------------------------------------------------------------

@pytest.fixture
def blank_image(tmp_path):
    path = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return str(path)


START_DETACHED = ("import json, sys\n"
                  "from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached\n"
                  "from ansible_collections.testfleet.infra.plugins.module_utils.vm import libvirt_domain as vm_libvirt\n"
                  "vm = vm_libvirt.LibvirtMachine(sys.argv[1], sys.argv[2], accel='tcg', name=sys.argv[3],\n"
                  "                               keep_run_dir=True, memory=256, cpus=1)\n"
                  "print(json.dumps(vm_detached.start_detached(vm)), flush=True)\n")


def _start_detached(collections_path, image, run_dir, name):
    """A VM started by a process of its own (as the module does), which then ends."""
    proc = subprocess.run([sys.executable, "-c", START_DETACHED, image, str(run_dir), name], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=collections_path), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_a_transient_domain_goes_with_its_keeper(tmp_path, blank_image, collections_path, libvirtd):
    before = image_naming.file_sha256(blank_image), os.stat(blank_image).st_mtime_ns, os.stat(blank_image).st_uid
    killed = _start_detached(collections_path, blank_image, tmp_path / "killed", "blank-killed")
    asked = _start_detached(collections_path, blank_image, tmp_path / "asked", "blank-asked")
    try:
        for state in (killed, asked):
            assert state["backend"] == "libvirt" and state["libvirt"]["uri"] == URI
            assert _domain(state["libvirt"]["uuid"]) == {"name": state["libvirt"]["domain"], "active": True,
                                                         "persistent": False}  # transient: never defined
            assert state["qemu_pid"] and vm_processes.process_alive(state["qemu_pid"], state["qemu_start"])
        assert vm_detached.read_state(str(tmp_path / "killed"))["running"]

        # the keeper killed outright: its connection closes, libvirtd destroys the domain (autodestroy)
        os.kill(killed["keeper_pid"], signal.SIGKILL)
        assert _wait(lambda: _domain(killed["libvirt"]["uuid"]) is None, 10), "the domain outlived its keeper"
        assert _wait(lambda: not vm_processes.process_alive(killed["qemu_pid"], killed["qemu_start"]), 10)
        assert vm_detached.read_state(str(tmp_path / "killed"))["running"] is False
        assert vm_detached.stop_detached(str(tmp_path / "killed")) is False and not (tmp_path / "killed").exists()

        # asked to stop (state=absent)
        assert vm_detached.stop_detached(str(tmp_path / "asked")) is True
        assert _domain(asked["libvirt"]["uuid"]) is None and not (tmp_path / "asked").exists()
        assert not vm_processes.process_alive(asked["keeper_pid"], asked["keeper_start"])
    finally:
        for name in ("killed", "asked"):
            vm_detached.stop_detached(str(tmp_path / name))
    # libvirt relabelled nothing and wrote nothing
    assert (image_naming.file_sha256(blank_image), os.stat(blank_image).st_mtime_ns, os.stat(blank_image).st_uid) == before


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_libvirtd_restart_does_not_leave_the_domain_behind(tmp_path, blank_image, collections_path, libvirtd, how):
    """libvirtd killed (a crash): QEMU runs on and the restarted libvirtd takes the domain back,
    without autodestroy; the keeper, whose connection broke, reconnects and destroys it. libvirtd
    stopped cleanly destroys it itself (its connections close)."""
    if not libvirtd.started:
        pytest.skip("the libvirtd that runs was not started by these tests: it is not restarted")
    state = _start_detached(collections_path, blank_image, tmp_path / "restart", "blank-restart")
    try:
        assert _domain(state["libvirt"]["uuid"])["active"]
        libvirtd.daemons.restart_libvirtd(how)
        assert _wait(lambda: _domain(state["libvirt"]["uuid"]) is None, 40), "the domain outlived libvirtd's restart"
        assert _wait(lambda: not vm_processes.process_alive(state["keeper_pid"], state["keeper_start"]), 30)
        kept = vm_detached.read_state(str(tmp_path / "restart"))
        assert kept["state"] == "stopped" and "connection to libvirtd broke" in kept["reason"]
    finally:
        vm_detached.stop_detached(str(tmp_path / "restart"))
    assert not (tmp_path / "restart").exists()


# --- a real image, through ansible-playbook ---------------------------------------------------

@pytest.fixture(scope="module")
def debian_image(collections_path, tmp_path_factory):
    """The image of RECIPE, built by vm_image into CACHE_DIR/images unless it is there already:
    ``(path, manifest)``."""
    if not shutil.which("debootstrap"):
        pytest.skip("needs debootstrap to build the image")
    work = tmp_path_factory.mktemp("debian-image")
    args_file = work / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "recipe": RECIPE, "output_dir": os.path.join(CACHE_DIR, "images"), "cache_dir": CACHE_DIR,
        "work_dir": str(work), "boot_timeout": 600, "_ansible_module_name": "testfleet.infra.vm_image"}}))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.testfleet.infra.plugins.modules.vm_image",
                           str(args_file)], capture_output=True, text=True, timeout=1500, check=False,
                          env=dict(os.environ, PYTHONPATH=collections_path))
    try:
        built = json.loads(proc.stdout)
    except ValueError:
        pytest.fail("vm_image printed no result: %s %s" % (proc.stdout[-2000:], proc.stderr[-2000:]))
    assert not built.get("failed"), built.get("msg")
    return built["path"], built["manifest"]


JOB = """
- name: A job that boots a VM of the image through libvirt
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
        backend: libvirt
      register: vm

    - name: The same again is not a change (auto keeps the running libvirt VM)
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

    - name: The domain, as community.libvirt sees it
      community.libvirt.virt:
        command: list_vms
        state: running
        uri: "{{ vm.libvirt.uri }}"
      register: running_vms

    - name: Its status
      community.libvirt.virt:
        command: status
        name: "{{ vm.libvirt.domain }}"
        uri: "{{ vm.libvirt.uri }}"
      register: domain_status

    - name: Results
      ansible.builtin.copy:
        content: "{{ {'vm': vm, 'again': again, 'over_ssh': over_ssh.stdout_lines, 'running_vms': running_vms.list_vms,
                      'status': domain_status.status} | to_json }}"
        dest: "{{ result_file }}"
        mode: "0644"

- name: Stop it, or wait as a long job would
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

    - name: The domain is gone
      community.libvirt.virt:
        command: list_vms
        uri: "{{ vm.libvirt.uri }}"
      register: after_stop
      failed_when: vm.libvirt.domain in after_stop.list_vms
      when: not (keep_running | bool)

    - name: Wait
      ansible.builtin.pause:
        seconds: 600
      when: keep_running | bool
"""


def _playbook(tmp_path, collections_path, extra, name):
    playbook = tmp_path / ("%s.yml" % name)
    playbook.write_text(JOB)
    extra_vars = tmp_path / ("%s-vars.json" % name)
    extra_vars.write_text(json.dumps(dict(extra, ansible_python_interpreter=sys.executable)))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"), ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote"))
    return [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "@%s" % extra_vars, str(playbook)], env


@pytest.mark.timeout(1800)
def test_a_job_boots_an_image_through_libvirt_and_the_vm_goes_with_the_job(tmp_path, collections_path, libvirtd,
                                                                           debian_image):
    path, manifest = debian_image
    sha256 = image_naming.parse_image_file_name(os.path.basename(path)).sha256
    assert image_naming.file_sha256(path) == sha256
    state_dir = tmp_path / "vms"
    job_vars = {"image": path, "state_dir": str(state_dir), "boot_cache_dir": str(tmp_path / "boot"),
                "probe_file": os.path.join(CACHE_DIR, "kvm-probe.json"), "vm_name": "lv-1",
                "result_file": str(tmp_path / "job.json"), "keep_running": False}

    # a job boots it, reaches it over SSH, and stops it
    argv, env = _playbook(tmp_path, collections_path, job_vars, "job")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "job.json").read_text())
    vm = result["vm"]
    assert vm["changed"] is True and vm["state"] == "running" and vm["backend"] == "libvirt"
    assert vm["backend_reason"].startswith("libvirt asked for: libvirtd ")
    assert vm["boot_to_ssh_s"] > 0 and vm["accel"] in ("kvm", "tcg")
    assert vm["libvirt"]["domain"] == vm_libvirt.domain_name("lv-1", str(state_dir / "lv-1"))
    assert result["again"]["changed"] is False and result["again"]["backend"] == "libvirt"
    assert result["over_ssh"] == ["tester", "setup-ran", "root-ok"]
    assert vm["libvirt"]["domain"] in result["running_vms"] and result["status"] == "running"
    assert set(vm["forwarded_ports"]) == {"8080"} and vm["ssh"]["host"] == "127.0.0.1"
    assert _domain(vm["libvirt"]["uuid"]) is None and not (state_dir / "lv-1").exists()
    assert image_naming.file_sha256(path) == sha256  # the image was never written

    # a job killed while its VM runs: the domain goes with it
    job_vars.update(vm_name="lv-2", keep_running=True, result_file=str(tmp_path / "job2.json"))
    argv, env = _playbook(tmp_path, collections_path, job_vars, "job2")
    job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert _wait(lambda: (tmp_path / "job2.json").exists() or job.poll() is not None, 600, 1.0)
        assert job.poll() is None, "the job ended before its VM was up"
        killed = json.loads((tmp_path / "job2.json").read_text())["vm"]
        state = vm_detached.read_state(str(state_dir / "lv-2"))
        assert state["running"] and state["backend"] == "libvirt"
        assert _domain(killed["libvirt"]["uuid"])["active"]
        assert image_naming.file_sha256(path) == sha256  # not written while a VM of it runs either
        os.killpg(job.pid, signal.SIGKILL)  # as a worker cancels a job it has to
        job.wait(30)
        assert _wait(lambda: _domain(killed["libvirt"]["uuid"]) is None, 15), "the domain outlived the killed job"
        assert _wait(lambda: not vm_processes.process_alive(state["keeper_pid"], state["keeper_start"]), 15)
        if state.get("qemu_pid"):
            assert _wait(lambda: not vm_processes.process_alive(state["qemu_pid"], state["qemu_start"]), 15)
        assert _wait(lambda: not (state_dir / "lv-2").exists(), 10)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        vm_detached.stop_detached(str(state_dir / "lv-2"))
    assert image_naming.file_sha256(path) == sha256
    print("\nlibvirt vm test: libvirt start (createXML) %.2f s and %.2f s, boot to SSH %.1f s and %.1f s (%s)"
          % (vm["libvirt"]["start_s"], killed["libvirt"]["start_s"], vm["boot_to_ssh_s"], killed["boot_to_ssh_s"],
             vm["accel"]))
