# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Booting a VM image through libvirt: the same throwaway VM as vm_run.py, QEMU started by libvirtd.

Everything but the launch is vm_run's: the qcow2 overlay of the image (the image is only ever a
read-only backing file), the per-boot SSH client and host keys handed over through fw_cfg
(here ``<sysinfo type='fwcfg'>`` entries), user-mode networking with ``hostfwd`` from 127.0.0.1
(libvirt 9.0 ignores ``<portForward>`` on a user interface without the passt backend, which it
does not have yet, so the ``-netdev`` is passed through ``<qemu:commandline>``), the run
directory, ``ssh_config``, the keeper process and its state file.

The domain is **transient** (``virDomainCreateXML``, never defined) and started with
``VIR_DOMAIN_START_AUTODESTROY``: libvirtd destroys it as soon as the connection that created
it closes. That connection belongs to the keeper (``vm/detached.py`` start_detached), so the domain goes
when the keeper stops it (``state: absent``, the owner ``ansible-playbook`` gone, the lifetime
over) and also when the keeper dies in any way, SIGKILL included: the kernel closes its socket
and libvirtd destroys the domain (the libvirt counterpart of vm_run's ``PR_SET_PDEATHSIG``). A
transient domain leaves no definition behind once destroyed. When the connection to libvirtd
breaks (libvirtd stopped cleanly destroys the domain itself; libvirtd killed and restarted takes
the domain back without autodestroy), the keeper reconnects and destroys the domain itself.
``detached.stop_detached`` destroys a domain its keeper left (by UUID) before it removes the run
directory.

QEMU runs as the user of the process that starts the domain and libvirt relabels nothing
(``<seclabel type='static' model='dac' relabel='no'>``): libvirt would otherwise chown the
overlay *and the cached image* to its ``qemu.conf`` user, and that user could not read the
per-boot keys in the run directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sys
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes

try:
    import libvirt
except ImportError as exc:  # the qemu backend needs no binding
    libvirt = None
    LIBVIRT_IMPORT_ERROR = str(exc)
else:
    LIBVIRT_IMPORT_ERROR = None

DEFAULT_URI = "qemu:///system"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# the PCI slot of the passed-through NIC: libvirt gives its own devices the lowest free slots
NIC_PCI_ADDR = "0x1e"
NETDEV_ID = "tfnet0"
DOMAIN_PREFIX = "testfleet-"
BACKENDS = ("auto", "qemu", "libvirt")

ET.register_namespace("qemu", QEMU_NS)

INSTALL_BINDING = ("install the binding into the Python that runs the module: pip install libvirt-python (needs the "
                   "Debian packages libvirt-dev and pkg-config, and a C compiler), or Debian's python3-libvirt for "
                   "/usr/bin/python3")
START_DAEMON = ("start libvirtd (Debian package libvirt-daemon-system; systemctl start libvirtd, or without systemd "
                "virtlogd -d && libvirtd -d)")


def _quiet(ctx, error):
    """libvirt's default error handler prints every error on stderr; errors are raised anyway."""


if libvirt is not None:
    libvirt.registerErrorHandler(_quiet, None)


def _need_binding():
    if libvirt is None:
        raise vm_run.VmError("the libvirt Python binding is not importable by %s (%s): %s"
                             % (sys.executable, LIBVIRT_IMPORT_ERROR, INSTALL_BINDING))


def check_uri(uri):
    """A local QEMU URI (``qemu:///system``, ``qemu:///session``, ``qemu+unix:///system``...):
    the overlay, the keys and the forwarded ports are on this host."""
    parts = urlsplit(uri or "")
    if not parts.scheme.startswith("qemu") or parts.netloc:
        raise vm_run.VmError("libvirt_uri must name a local QEMU libvirtd (such as qemu:///system or "
                             "qemu:///session), not %r: the VM's files and ports are on this host" % (uri,))
    return uri


def domain_name(name, run_dir):
    """The domain's name: the VM's name and a hash of its run directory (two state_dirs may
    hold VMs of one name)."""
    digest = hashlib.sha256(os.path.abspath(run_dir).encode("utf-8")).hexdigest()[:8]
    return "%s%s-%s" % (DOMAIN_PREFIX, name, digest)


def description(run_dir):
    return "testfleet vm_instance, run directory %s" % os.path.abspath(run_dir)


def version_text(number):
    return "%d.%d.%d" % (number // 1000000, number // 1000 % 1000, number % 1000)


def _sub(parent, tag, text=None, **attributes):
    element = ET.SubElement(parent, tag, {key.rstrip("_"): str(value) for key, value in attributes.items()})
    if text is not None:
        element.text = str(text)
    return element


def domain_xml(name, disk, accel="tcg", memory=1024, cpus=2, kernel=None, initrd=None, cmdline=None, serial=None,
               ssh_port=None, forwards=(), fw_cfg=None, emulator=None, run_as=None, uuid=None, run_dir=None,
               disk_format="qcow2"):
    """The XML of a transient domain that boots ``disk`` as vm_run.qemu_command does.

    ``accel`` ``tcg`` is ``<domain type='qemu'>`` with ``<cpu mode='maximum'/>`` (``-cpu max``),
    ``kvm`` is ``<domain type='kvm'>`` with ``host-passthrough``; ``kernel``/``initrd``/``cmdline``
    boot a kernel directly; ``serial`` is the console's log file; ``fw_cfg`` maps fw_cfg names
    (``opt/...``) to host files; ``ssh_port`` and ``forwards`` (``(host_port, guest_port)``) are
    hostfwd rules of a user-mode ``-netdev`` passed through ``<qemu:commandline>``; ``run_as``
    ``(uid, gid)`` runs QEMU as that user without relabelling any file.
    """
    if accel not in ("kvm", "tcg"):
        raise ValueError("accel must be kvm or tcg, not %r" % (accel,))
    root = ET.Element("domain", {"type": "kvm" if accel == "kvm" else "qemu"})
    _sub(root, "name", name)
    if uuid:
        _sub(root, "uuid", uuid)
    if run_dir:
        _sub(root, "description", description(run_dir))
    _sub(root, "memory", int(memory), unit="MiB")
    _sub(root, "vcpu", int(cpus))
    os_element = _sub(root, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    if kernel:
        _sub(os_element, "kernel", kernel)
        if initrd:
            _sub(os_element, "initrd", initrd)
        _sub(os_element, "cmdline", cmdline or "root=/dev/vda rw console=ttyS0")
    else:
        _sub(os_element, "boot", dev="hd")
    if fw_cfg:
        sysinfo = _sub(root, "sysinfo", type_="fwcfg")
        for key, path in sorted(fw_cfg.items()):
            _sub(sysinfo, "entry", name=key, file=path)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if accel == "kvm":
        _sub(root, "cpu", mode="host-passthrough", check="none")
    else:
        _sub(root, "cpu", mode="maximum", check="none")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    if emulator:
        _sub(devices, "emulator", emulator)
    disk_element = _sub(devices, "disk", type_="file", device="disk")
    _sub(disk_element, "driver", name="qemu", type_=disk_format, discard="unmap")
    _sub(disk_element, "source", file=disk)
    _sub(disk_element, "target", dev="vda", bus="virtio")
    _sub(devices, "controller", type_="usb", model="none")
    if serial:
        serial_element = _sub(devices, "serial", type_="file")
        _sub(serial_element, "source", path=serial, append="off")
        _sub(serial_element, "target", port=0)
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "memballoon", model="none")
    if run_as is not None:
        label = _sub(root, "seclabel", type_="static", model="dac", relabel="no")
        _sub(label, "label", "+%d:+%d" % tuple(run_as))
    commandline = _sub(root, "{%s}commandline" % QEMU_NS)
    for value in ("-netdev", vm_run.user_netdev(NETDEV_ID, ssh_port, forwards),
                  "-device", "virtio-net-pci,netdev=%s,addr=%s" % (NETDEV_ID, NIC_PCI_ADDR)):
        _sub(commandline, "{%s}arg" % QEMU_NS, value=value)
    if hasattr(ET, "indent"):  # Python 3.9+
        ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


# --- is there a libvirtd? -----------------------------------------------------------------------

def probe_libvirt(uri=DEFAULT_URI):
    """``(True, reason)`` when the binding imports and a QEMU libvirtd answers on ``uri``, else
    ``(False, why)``. Opens and closes one connection."""
    try:
        check_uri(uri)
    except vm_run.VmError as exc:
        return False, str(exc)
    if libvirt is None:
        return False, "the libvirt Python binding is not importable by %s (%s)" % (sys.executable, LIBVIRT_IMPORT_ERROR)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return False, "no libvirtd answers on %s (%s)" % (uri, exc.get_error_message() or exc)
    try:
        return True, "libvirtd %s answers on %s" % (version_text(conn.getLibVersion()), uri)
    except libvirt.libvirtError as exc:
        return False, "libvirtd on %s: %s" % (uri, exc.get_error_message() or exc)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def choose_backend(backend="auto", uri=DEFAULT_URI, probe=None):
    """``(backend, reason)``: ``qemu`` or ``libvirt``. ``auto`` is libvirt when ``probe(uri)``
    (a libvirtd answers, the binding imports) says so, else plain QEMU; ``libvirt`` without a
    libvirtd raises VmError with how to fix it."""
    if backend not in BACKENDS:
        raise ValueError("backend must be one of %s, not %r" % (", ".join(BACKENDS), backend))
    if backend == "qemu":
        return "qemu", "qemu asked for"
    works, reason = (probe or probe_libvirt)(uri)
    if works:
        return "libvirt", "%s: %s" % ("libvirt asked for" if backend == "libvirt" else "auto", reason)
    if backend == "auto":
        return "qemu", "auto: %s, so plain QEMU" % reason
    fix = INSTALL_BINDING if "binding" in reason else START_DAEMON
    raise vm_run.VmError("backend libvirt: %s. To fix: %s; or use backend auto (plain QEMU when there is no libvirtd) "
                         "or qemu" % (reason, fix))


def _hint(message):
    """A hint for a libvirt error that has a known cause on hosts without systemd."""
    if "virtlogd-sock" in message:
        return " (virtlogd does not run: start it, virtlogd -d, or set stdio_handler = \"file\" in qemu.conf)"
    if "Permission denied" in message:
        return " (QEMU runs as the module's user: it must read the image, the kernel and the run directory)"
    return ""


# --- the QEMU process libvirtd started ----------------------------------------------------------

def _pid_files(name, uri):
    if urlsplit(uri).path.rstrip("/") == "/session":
        runtime = os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache")
        return [os.path.join(runtime, "libvirt", "qemu", "run", name + ".pid")]
    return ["/run/libvirt/qemu/%s.pid" % name, "/var/run/libvirt/qemu/%s.pid" % name]


def _is_qemu_of(pid, name):
    argv = vm_processes.command_line(pid)
    return any(part.startswith("guest=%s," % name) or part == "guest=%s" % name for part in argv)


def find_qemu_pid(name, uri=DEFAULT_URI):
    """The pid of the QEMU process of domain ``name`` (libvirt's pid file, else a look through
    /proc for ``-name guest=<name>``), or None."""
    for path in _pid_files(name, uri):
        with contextlib.suppress(OSError, ValueError):
            with open(path) as handle:
                pid = int(handle.read().strip())
            if _is_qemu_of(pid, name):
                return pid
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _is_qemu_of(int(entry), name):
            return int(entry)
    return None


def log_file(name, uri=DEFAULT_URI):
    """Where libvirtd keeps QEMU's own messages for this domain."""
    if urlsplit(uri).path.rstrip("/") == "/session":
        return os.path.join(os.path.expanduser("~"), ".cache", "libvirt", "qemu", "log", name + ".log")
    return "/var/log/libvirt/qemu/%s.log" % name


# --- destroying ---------------------------------------------------------------------------------

def _no_domain(exc):
    return exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN or "not running" in (exc.get_error_message() or "")


def destroy_domain(uri, uuid, conn=None, attempts=15, delay=2.0):
    """Destroy the domain of ``uuid`` on ``uri`` if it runs (with ``conn``, else a new
    connection; a refused connection is retried ``attempts`` times, ``delay`` s apart: libvirtd
    may be restarting). Returns True when a domain was destroyed, False when there was none."""
    _need_binding()
    last = None
    for attempt in range(attempts):
        own = None
        try:
            if conn is None:
                conn = own = libvirt.open(uri)
            try:
                domain = conn.lookupByUUIDString(uuid)
                domain.destroy()
            except libvirt.libvirtError as exc:
                if _no_domain(exc):
                    return False
                raise
            return True
        except libvirt.libvirtError as exc:
            last = exc
            conn = None  # a broken connection: the next attempt opens a new one
        finally:
            if own is not None:
                with contextlib.suppress(Exception):
                    own.close()
        if attempt + 1 < attempts:
            time.sleep(delay)
    raise vm_run.VmError("cannot destroy the libvirt domain %s on %s: %s" % (uuid, uri, last))


def _destroy_stale(conn, name, run_dir):
    """A running domain of this name is one whose keeper was lost (libvirtd restarted meanwhile):
    destroy it, if it is a transient testfleet domain of this run directory."""
    try:
        domain = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    try:
        text = domain.XMLDesc(0)
        ours = description(run_dir) in text and not domain.isPersistent()
    except libvirt.libvirtError:
        return
    if not ours:
        raise vm_run.VmError("libvirt has a domain named %s that is not a throwaway domain of %s: remove it (virsh "
                             "destroy / undefine) or use another VM name" % (name, run_dir))
    with contextlib.suppress(libvirt.libvirtError):
        domain.destroy()


# --- one VM -------------------------------------------------------------------------------------

class LibvirtMachine(vm_run.VirtualMachine):
    """A :class:`vm_run.VirtualMachine` whose QEMU libvirtd starts, as a transient domain with
    autodestroy (see the module's docstring). ``uri`` is a local QEMU libvirt URI."""

    def __init__(self, image, run_dir, uri=DEFAULT_URI, **kwargs):
        super().__init__(image, run_dir, **kwargs)
        self.uri = check_uri(uri)
        self.domain_name = domain_name(self.name, self.run_dir)
        self.uuid = str(uuidlib.uuid4())
        self.conn = None
        self.domain = None
        self.qemu_pid = None
        self.start_seconds = None
        self.lost = None
        self.domain_file = os.path.join(self.run_dir, "domain.xml")
        self.qemu_log = log_file(self.domain_name, self.uri)  # QEMU's messages, kept by libvirtd

    def _launch(self):
        _need_binding()
        try:
            self.conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise vm_run.VmError("no libvirtd answers on %s (%s): %s"
                                 % (self.uri, exc.get_error_message(), START_DAEMON))
        _destroy_stale(self.conn, self.domain_name, self.run_dir)
        emulator = shutil.which(self.qemu) or self.qemu
        last = None
        for attempt in range(self.port_attempts):
            port = vm_run.free_port()
            self.forwards = {guest: vm_run.free_port() for guest in self.guest_ports}
            self.target.port = port
            xml = domain_xml(self.domain_name, self.overlay, accel=self.accel, memory=self.memory, cpus=self.cpus,
                             kernel=self.boot.get("kernel_file"), initrd=self.boot.get("initrd_file"),
                             cmdline=self.boot.get("cmdline"), serial=self.console, ssh_port=port,
                             forwards=[(host, guest) for guest, host in self.forwards.items()],
                             fw_cfg={vm_run.FW_CFG_AUTHORIZED_KEYS: self.target.key_file + ".pub",
                                     vm_run.FW_CFG_HOST_KEY: os.path.join(self.run_dir, "host_ed25519")},
                             emulator=emulator, run_as=(os.getuid(), os.getgid()), uuid=self.uuid,
                             run_dir=self.run_dir)
            with open(self.domain_file, "w") as handle:
                handle.write(xml)
            with open(os.path.join(self.run_dir, "ssh_config"), "w") as handle:
                handle.write(self.target.config_text(self.name))
            began = time.monotonic()
            try:
                self.domain = self.conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
            except libvirt.libvirtError as exc:
                message = exc.get_error_message() or str(exc)
                if "host forwarding" in message:  # a port taken meanwhile: another one
                    last = message
                    continue
                raise vm_run.VmError("libvirt could not start the domain %s on %s: %s%s"
                                     % (self.domain_name, self.uri, message, _hint(message)))
            self.started_at = time.monotonic()
            self.start_seconds = round(self.started_at - began, 2)
            self.qemu_pid = find_qemu_pid(self.domain_name, self.uri)
            return
        raise vm_run.VmError("QEMU could not forward a port on 127.0.0.1 after %d attempts: %s"
                             % (self.port_attempts, last))

    def alive(self):
        if self.domain is None:
            return False
        try:
            return bool(self.domain.isActive())
        except libvirt.libvirtError as exc:
            if not _no_domain(exc):
                self.lost = exc.get_error_message() or str(exc)
            return False

    def describe_process(self):
        return "libvirt domain %s on %s, qemu %s, started in %.2f s" % (self.domain_name, self.uri, self.qemu_pid,
                                                                        self.start_seconds or 0)

    def exit_reason(self):
        if self.lost:
            return "QEMU unreachable: the connection to libvirtd broke (%s)" % self.lost
        return "QEMU ended (the libvirt domain %s is no longer running)" % self.domain_name

    def _terminate(self, grace):
        if self.domain is None and self.conn is None:
            return
        try:
            # a broken connection (self.lost) is replaced: libvirtd forgot autodestroy if it restarted
            destroy_domain(self.uri, self.uuid, conn=None if self.lost else self.conn)
        except vm_run.VmError:
            if self.qemu_pid and vm_processes.process_alive(self.qemu_pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.qemu_pid, signal.SIGKILL)
        finally:
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
            self.conn = self.domain = None

    def info(self):
        info = super().info()
        info.update(backend="libvirt", qemu_pid=self.qemu_pid,
                    qemu_start=vm_processes.process_start_time(self.qemu_pid) if self.qemu_pid else None,
                    libvirt={"uri": self.uri, "domain": self.domain_name, "uuid": self.uuid,
                             "start_s": self.start_seconds, "domain_xml": self.domain_file,
                             "log": log_file(self.domain_name, self.uri)})
        return info
