# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Booting a VM image with plain QEMU: a throwaway overlay, SSH on 127.0.0.1, guaranteed teardown.

The image is never written: the VM runs on a qcow2 overlay (in the VM's run directory) backed
by the image, which QEMU opens read-only; the overlay goes with the VM.

SSH: each boot gets a fresh ed25519 client key and host key (``ssh-keygen`` in the run
directory), handed to the guest through QEMU's ``fw_cfg`` (``opt/org.testfleet/...``); the unit
``testfleet-ssh-keys`` of every vm_image image installs them before sshd starts. So the client
checks the host key strictly (``known_hosts`` with a ``HostKeyAlias``) and no private key is
ever part of an image. Port 22 of the guest is forwarded from a free port on 127.0.0.1
(QEMU user-mode networking); more guest ports with ``forwards``. ``ssh_config`` in the run
directory lets anyone reach the VM with ``ssh -F <run dir>/ssh_config <name>``.

Acceleration: KVM when it works, else TCG (``-accel tcg -cpu max``). /dev/kvm existing is not
enough (on some hosts KVM guests hang), so :func:`choose_accel` finds out by trying, with the
probe of ``vm/kvm.py`` (which the worker role runs too): it boots a kernel under KVM with no root
file system and waits for the kernel's panic; the result is kept in a small JSON file (the worker's
``kvm-probe.json`` has the same shape and can be used).

Teardown: QEMU runs in its own process group and gets SIGKILL when the process that started it
dies (``PR_SET_PDEATHSIG``), whatever the way it died. :class:`VirtualMachine` is a context
manager that stops the VM on exit, and while a VM runs, SIGTERM, SIGINT and SIGHUP stop it
before the process goes on with the signal. ``vm/detached.py`` starts a VM that outlives the
call (a job's later tasks use it) under a small keeper process, and stops it (either backend).

``vm/libvirt_domain.py`` starts the same VM through libvirt (``LibvirtMachine``, a subclass that only
launches, checks and stops QEMU differently), under the same keeper.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from ansible_collections.testfleet.infra.plugins.module_utils.files import write_atomic
from ansible_collections.testfleet.infra.plugins.module_utils.vm import kvm
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes

DEFAULT_QEMU = kvm.DEFAULT_QEMU
FW_CFG_AUTHORIZED_KEYS = "opt/org.testfleet/authorized_keys"
FW_CFG_HOST_KEY = "opt/org.testfleet/ssh_host_ed25519_key"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class VmError(Exception):
    """A VM could not be started, reached or stopped; ``str()`` says why (with the console's end)."""


# --- small helpers ------------------------------------------------------------------------------

def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on now."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def file_tail(path, lines=12):
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 16384))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


def _run(argv, what, timeout=120):
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VmError("%s: %s" % (what, exc))
    if proc.returncode != 0:
        raise VmError("%s failed: %s" % (what, (proc.stderr or proc.stdout).strip()))
    return proc.stdout


def write_json(path, data):
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode=0o644, fsync=False)


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


# --- QEMU's command line ------------------------------------------------------------------------

def qemu_command(disk, accel="tcg", memory=1024, cpus=2, kernel=None, initrd=None, cmdline=None, serial=None,
                 ssh_port=None, forwards=(), fw_cfg=None, smbios=None, qemu=None, disk_format="qcow2"):
    """The argv that boots ``disk`` (virtio) with user-mode networking.

    ``accel`` is ``kvm`` (``-cpu host``) or ``tcg`` (``-cpu max``); ``kernel``/``initrd``/
    ``cmdline`` boot a kernel directly (else the disk's boot loader); ``ssh_port`` forwards
    127.0.0.1:ssh_port to the guest's port 22, ``forwards`` more ``(host_port, guest_port)``;
    ``fw_cfg`` maps fw_cfg names to host files; ``serial`` is the console's log file.
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError("accel must be kvm or tcg, not %r" % (accel,))
    argv = [qemu or DEFAULT_QEMU, "-machine", "pc", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-m", str(int(memory)), "-smp", str(int(cpus)), "-nodefaults", "-display", "none", "-no-user-config",
            "-serial", "file:%s" % serial if serial else "null",
            "-drive", "file=%s,if=virtio,format=%s,discard=unmap" % (disk.replace(",", ",,"), disk_format),
            "-device", "virtio-rng-pci"]
    argv += ["-netdev", user_netdev("net0", ssh_port, forwards), "-device", "virtio-net-pci,netdev=net0"]
    if kernel:
        argv += ["-kernel", kernel]
        if initrd:
            argv += ["-initrd", initrd]
        argv += ["-append", cmdline or "root=/dev/vda rw console=ttyS0"]
    for name, path in sorted((fw_cfg or {}).items()):
        argv += ["-fw_cfg", "name=%s,file=%s" % (name, path.replace(",", ",,"))]
    if smbios:
        argv += ["-smbios", smbios]
    return argv


def user_netdev(netdev_id, ssh_port=None, forwards=()):
    """The value of ``-netdev`` for user-mode networking: 127.0.0.1:ssh_port to the guest's port
    22 and ``forwards`` ``(host_port, guest_port)`` (also used by the libvirt backend)."""
    rules = []
    if ssh_port:
        rules.append("hostfwd=tcp:127.0.0.1:%d-:22" % ssh_port)
    for host_port, guest_port in forwards:
        rules.append("hostfwd=tcp:127.0.0.1:%d-:%d" % (host_port, guest_port))
    return ",".join(["user", "id=%s" % netdev_id] + rules)


# --- KVM: does it work? -------------------------------------------------------------------------

def choose_accel(accel="auto", kernel=None, probe_file=None, qemu=None, probe_timeout=20.0):
    """``(accel, reason)``: ``kvm`` or ``tcg``. ``auto`` uses KVM only when it works here: a
    probe result kept in ``probe_file`` (``{"kvm": bool, "reason": ...}``), else a probe with
    ``kernel`` (or the newest /boot/vmlinuz-* of this host), whose result is then kept."""
    if accel in ("kvm", "tcg"):
        return accel, "%s asked for" % accel
    if accel != "auto":
        raise ValueError("accel must be auto, kvm or tcg, not %r" % (accel,))
    if not os.path.exists("/dev/kvm"):
        return "tcg", "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm is not readable and writable by this user"
    saved = read_json(probe_file) if probe_file else None
    if isinstance(saved, dict) and isinstance(saved.get("kvm"), bool):
        return ("kvm" if saved["kvm"] else "tcg"), "KVM probe (%s): %s" % (probe_file, saved.get("reason", ""))
    kernel = kernel or kvm.newest_host_kernel()
    if kernel is None:
        return "tcg", "no kernel to probe KVM with"
    works, reason = kvm.probe(kernel, qemu=qemu, timeout=probe_timeout)
    if probe_file:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(os.path.abspath(probe_file)), exist_ok=True)
            write_json(probe_file, {"kvm": works, "reason": reason, "kernel": kernel,
                                    "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return ("kvm" if works else "tcg"), "KVM probe: %s" % reason


# --- the kernel of an image ---------------------------------------------------------------------

def boot_spec(image, manifest=None, boot_cache_dir=None, kernel=None, initrd=None, cmdline=None):
    """How to boot ``image``: ``{"mode": "kernel", "kernel_file", "initrd_file", "cmdline"}`` (host
    files) or ``{"mode": "disk"}``. Explicit ``kernel``/``initrd`` win; else a manifest whose
    ``boot.mode`` is ``kernel`` names the files inside the image, which are extracted once into
    ``boot_cache_dir`` (see :func:`extract_boot_files`)."""
    if kernel:
        return {"mode": "kernel", "kernel_file": kernel, "initrd_file": initrd,
                "cmdline": cmdline or "root=/dev/vda rw console=ttyS0"}
    boot = (manifest or {}).get("boot") or {"mode": "disk"}
    if boot.get("mode") != "kernel":
        return {"mode": "disk"}
    if not boot_cache_dir:
        raise VmError("the image boots a kernel from its /boot: give a boot cache directory to extract it into")
    key = (manifest or {}).get("sha256") or _file_key(image)
    kernel_file, initrd_file = extract_boot_files(image, boot["kernel"], boot.get("initrd"),
                                                  os.path.join(boot_cache_dir, key))
    return {"mode": "kernel", "kernel_file": kernel_file, "initrd_file": initrd_file,
            "cmdline": cmdline or boot.get("cmdline") or "root=/dev/vda rw console=ttyS0"}


def _file_key(path):
    stat = os.stat(path)
    return "%s-%d-%d" % (re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(path)), stat.st_size, stat.st_mtime_ns)


def extract_boot_files(image, kernel_path, initrd_path, target_dir):
    """Copy the kernel (and initrd) at those paths inside ``image`` (an ext4 file system without
    partitions, as vm_image makes) to ``target_dir`` once: the qcow2 is converted to a sparse raw
    file and read with debugfs (a few seconds; no mount, no root needed)."""
    kernel_file, initrd_file = os.path.join(target_dir, "vmlinuz"), os.path.join(target_dir, "initrd.img")
    if os.path.exists(kernel_file) and (not initrd_path or os.path.exists(initrd_file)):
        return kernel_file, initrd_file if initrd_path else None
    parent = os.path.dirname(target_dir)
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(kernel_file) and (not initrd_path or os.path.exists(initrd_file)):
            return kernel_file, initrd_file if initrd_path else None
        work = tempfile.mkdtemp(prefix=".extract-", dir=parent)
        try:
            raw = os.path.join(work, "disk.raw")
            _run(["qemu-img", "convert", "-O", "raw", image, raw], "reading %s" % image, timeout=600)
            for inside, name in ((kernel_path, "vmlinuz"), (initrd_path, "initrd.img")):
                if not inside:
                    continue
                out = os.path.join(work, name)
                _run(["debugfs", "-R", "dump -p %s %s" % (inside, out), raw], "debugfs dump of %s" % inside)
                if not os.path.exists(out) or os.path.getsize(out) == 0:
                    raise VmError("%s has no %s (is it an image made by vm_image?)" % (image, inside))
            os.unlink(raw)
            if os.path.exists(target_dir):
                shutil.rmtree(target_dir)
            os.rename(work, target_dir)
        finally:
            if os.path.exists(work):
                shutil.rmtree(work, ignore_errors=True)
    return kernel_file, initrd_file if initrd_path else None


# --- SSH ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class SshTarget:
    """How to reach a VM's sshd on 127.0.0.1: ``argv(command)`` and ``run(command)``.

    :meth:`describe` is what a VM's state file and the module's result keep of it;
    :meth:`from_description` makes it again from that."""

    port: int
    user: str
    key_file: str
    known_hosts: str
    alias: str
    host: str = "127.0.0.1"

    @classmethod
    def from_description(cls, described):
        return cls(described["port"], described["user"], described["private_key_file"], described["known_hosts_file"],
                   described["host_key_alias"], host=described.get("host", "127.0.0.1"))

    def options(self):
        return ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityFile=%s" % self.key_file,
                "-o", "UserKnownHostsFile=%s" % self.known_hosts, "-o", "StrictHostKeyChecking=yes",
                "-o", "HostKeyAlias=%s" % self.alias, "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15",
                "-o", "LogLevel=ERROR", "-p", str(self.port)]

    def argv(self, command=None):
        argv = ["ssh", "-F", "/dev/null"] + self.options() + ["%s@%s" % (self.user, self.host)]
        if command is not None:
            argv += ["--", command]
        return argv

    def run(self, command, timeout=600, input_data=None):
        """Run a shell command line in the VM; a CompletedProcess (text)."""
        return subprocess.run(self.argv(command), capture_output=True, text=True, timeout=timeout, check=False,
                              input=input_data, stdin=None if input_data is not None else subprocess.DEVNULL)

    def banner(self, timeout=2.0):
        """True when something on the port greets like an SSH server."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def config_text(self, name):
        return ("Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                "  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  HostKeyAlias %s\n  BatchMode yes\n"
                "  LogLevel ERROR\n" % (name, self.host, self.port, self.user, self.key_file, self.known_hosts,
                                        self.alias))

    def describe(self):
        return {"host": self.host, "port": self.port, "user": self.user, "private_key_file": self.key_file,
                "known_hosts_file": self.known_hosts, "host_key_alias": self.alias}

    def ansible_vars(self):
        return {"ansible_host": self.host, "ansible_port": self.port, "ansible_user": self.user,
                "ansible_ssh_private_key_file": self.key_file,
                "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o HostKeyAlias=%s"
                                           " -o IdentitiesOnly=yes" % (self.known_hosts, self.alias)}


def wait_for_ssh(target, deadline, alive, console=None, interval=0.5):
    """Wait until ``target`` runs a command; ``alive()`` False (QEMU ended) fails at once.
    Returns the command's output (``uname -a``)."""
    last = "no answer"
    while True:
        if not alive():
            raise VmError("the VM stopped before it answered over SSH: %s" % (file_tail(console) if console else ""))
        if target.banner():
            try:
                proc = target.run("uname -a", timeout=30)
            except subprocess.TimeoutExpired:
                proc = None
                last = "ssh timed out"
            if proc is not None and proc.returncode == 0:
                return proc.stdout.strip()
            if proc is not None:
                last = (proc.stderr or proc.stdout).strip() or "ssh exit %d" % proc.returncode
        if time.monotonic() > deadline:
            raise VmError("the VM did not answer over SSH in time (last: %s); its console: %s"
                          % (last, file_tail(console) if console else ""))
        time.sleep(interval)


# --- one VM -------------------------------------------------------------------------------------

_RUNNING = set()
SIGNAL_GUARD = {"installed": False, "previous": {}}
_GUARD_LOCK = threading.Lock()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stop_all():
    for vm in list(_RUNNING):
        with contextlib.suppress(Exception):
            vm.stop()


def _on_signal(signum, frame):
    # read before stopping: the last VM's stop() restores (and forgets) the previous handlers
    previous = SIGNAL_GUARD["previous"].get(signum, signal.SIG_DFL)
    _stop_all()
    _restore_signals()
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        os.kill(os.getpid(), signum)


def _install_signals():
    with _GUARD_LOCK:
        if SIGNAL_GUARD["installed"] or threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue  # ignored by this process (nohup, a background job): it stays ignored
            SIGNAL_GUARD["previous"][signum] = signal.signal(signum, _on_signal)
        SIGNAL_GUARD["installed"] = True


def _restore_signals():
    with _GUARD_LOCK:
        if not SIGNAL_GUARD["installed"] or threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in SIGNAL_GUARD["previous"].items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        SIGNAL_GUARD["previous"].clear()
        SIGNAL_GUARD["installed"] = False


atexit.register(_stop_all)


class VirtualMachine:
    """A VM booted from ``image`` on a throwaway overlay in ``run_dir`` (created; removed by
    :meth:`stop` unless ``keep_run_dir``). ``boot`` comes from :func:`boot_spec`.

    ``with VirtualMachine(...) as vm: vm.wait_for_ssh(); vm.ssh("make check")``.
    """

    def __init__(self, image, run_dir, boot=None, user="tester", accel="tcg", accel_reason=None, memory=1024, cpus=2,
                 forwards=(), qemu=None, name="vm", keep_run_dir=False, port_attempts=5):
        if not _NAME_RE.match(name):
            raise VmError("a VM name is 1-64 letters, digits, '.', '_' or '-', not %r" % (name,))
        self.image = os.path.abspath(image)
        self.run_dir = os.path.abspath(run_dir)
        self.boot = boot or {"mode": "disk"}
        self.user = user
        self.accel = accel
        self.accel_reason = accel_reason or "%s asked for" % accel
        self.memory = memory
        self.cpus = cpus
        self.guest_ports = [int(port) for port in forwards]
        self.forwards = {}
        self.qemu = qemu or DEFAULT_QEMU
        self.name = name
        self.keep_run_dir = keep_run_dir
        self.port_attempts = port_attempts
        self.proc = None
        self.started_at = None
        self.boot_to_ssh = None
        self.target = None
        self.overlay = os.path.join(self.run_dir, "overlay.qcow2")
        self.console = os.path.join(self.run_dir, "serial.log")
        self.qemu_log = os.path.join(self.run_dir, "qemu.log")

    # -- lifecycle --
    def start(self):
        """Create the overlay and keys and launch QEMU (not waiting for the guest)."""
        if not os.path.isfile(self.image):
            raise VmError("no image at %s" % self.image)
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", self.image, self.overlay],
             "creating the overlay of %s" % self.image)
        key, host_key = os.path.join(self.run_dir, "id_ed25519"), os.path.join(self.run_dir, "host_ed25519")
        for path in (key, host_key):
            for old in (path, path + ".pub"):
                with contextlib.suppress(OSError):
                    os.unlink(old)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "testfleet-%s" % self.name, "-f", path],
                 "ssh-keygen")
        alias = "testfleet-vm-%s" % self.name
        known_hosts = os.path.join(self.run_dir, "known_hosts")
        with open(host_key + ".pub") as handle:
            host_public = " ".join(handle.read().split()[:2])
        with open(known_hosts, "w") as handle:
            handle.write("%s %s\n" % (alias, host_public))
        self.target = SshTarget(0, self.user, key, known_hosts, alias)
        _RUNNING.add(self)
        _install_signals()
        self._launch()
        return self

    def _launch(self):
        for attempt in range(self.port_attempts):
            port = free_port()
            self.forwards = {guest: free_port() for guest in self.guest_ports}
            self.target.port = port
            argv = qemu_command(self.overlay, accel=self.accel, memory=self.memory, cpus=self.cpus,
                                kernel=self.boot.get("kernel_file"), initrd=self.boot.get("initrd_file"),
                                cmdline=self.boot.get("cmdline"), serial=self.console, ssh_port=port,
                                forwards=[(host, guest) for guest, host in self.forwards.items()],
                                fw_cfg={FW_CFG_AUTHORIZED_KEYS: self.target.key_file + ".pub",
                                        FW_CFG_HOST_KEY: os.path.join(self.run_dir, "host_ed25519")},
                                qemu=self.qemu)
            with open(self.qemu_log, "wb") as log:
                log.write(("$ %s\n" % " ".join(argv)).encode("utf-8"))
                log.flush()
                self.started_at = time.monotonic()
                try:
                    self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                 start_new_session=True, preexec_fn=kvm.die_with_parent, close_fds=True)
                except OSError as exc:
                    raise VmError("cannot run %s: %s" % (self.qemu, exc.strerror or exc))
            with open(os.path.join(self.run_dir, "ssh_config"), "w") as handle:
                handle.write(self.target.config_text(self.name))
            # a port taken between free_port() and QEMU's bind makes QEMU exit at once: retry
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and self.proc.poll() is None:
                time.sleep(0.05)
            if self.proc.poll() is None or "host forwarding" not in file_tail(self.qemu_log):
                return
        raise VmError("QEMU could not forward a port on 127.0.0.1 after %d attempts: %s"
                      % (self.port_attempts, file_tail(self.qemu_log)))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_for_ssh(self, timeout=300):
        """Wait until the guest runs a command over SSH; return the seconds since QEMU started."""
        if self.started_at is None:
            raise VmError("the VM was not started")
        try:
            wait_for_ssh(self.target, self.started_at + timeout, self.alive, self.console)
        except VmError as exc:
            raise VmError("%s (%s, %s; QEMU: %s)" % (exc, self.accel, self.accel_reason, file_tail(self.qemu_log, 3)))
        self.boot_to_ssh = round(time.monotonic() - self.started_at, 2)
        return self.boot_to_ssh

    def ssh(self, command, timeout=600, input_data=None):
        return self.target.run(command, timeout=timeout, input_data=input_data)

    def describe_process(self):
        """What runs the VM, for the keeper's log."""
        return "qemu %d" % self.proc.pid

    def exit_reason(self):
        """Why the VM is no longer alive, once :meth:`alive` said so."""
        return "QEMU ended (exit %s)" % self.proc.poll()

    def stop(self, grace=5.0):
        """Stop QEMU (its whole process group: SIGTERM, then SIGKILL) and drop the overlay."""
        _RUNNING.discard(self)
        self._terminate(grace)
        if not _RUNNING:
            _restore_signals()
        if self.keep_run_dir:
            with contextlib.suppress(OSError):
                os.unlink(self.overlay)
        else:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _terminate(self, grace):
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()

    def info(self):
        return {"name": self.name, "backend": "qemu", "image": self.image, "run_dir": self.run_dir, "accel": self.accel,
                "accel_reason": self.accel_reason, "qemu_pid": self.proc.pid if self.proc else None,
                "qemu_start": vm_processes.process_start_time(self.proc.pid) if self.proc else None,
                "ssh": self.target.describe() if self.target else None, "forwards": dict(self.forwards),
                "console": self.console, "boot": self.boot.get("mode")}


def instance_dir(state_dir, name):
    if not _NAME_RE.match(name or ""):
        raise VmError("a VM name is 1-64 letters, digits, '.', '_' or '-', not %r" % (name,))
    return os.path.join(state_dir, name)
