"""vm_libvirt: the domain XML, the choice of backend, URIs and names, and LibvirtMachine's launch
against a fake libvirt binding. (Booting through a real libvirtd: tests/integration/test_vm_libvirt.py.)"""

import os
import shutil
import uuid
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.vm import libvirt_domain as vm_libvirt
from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached

from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run

QEMU = "{%s}" % vm_libvirt.QEMU_NS
SCHEMA = "/usr/share/libvirt/schemas/domain.rng"


def _tcg_xml(**overrides):
    args = dict(kernel="/cache/boot/vmlinuz", initrd="/cache/boot/initrd.img", cmdline="root=/dev/vda rw console=ttyS0",
                serial="/vms/a/serial.log", ssh_port=40022, forwards=[(40080, 80)], memory=2048, cpus=4,
                fw_cfg={vm_run.FW_CFG_AUTHORIZED_KEYS: "/vms/a/id_ed25519.pub",
                        vm_run.FW_CFG_HOST_KEY: "/vms/a/host_ed25519"},
                emulator="/usr/bin/qemu-system-x86_64", run_as=(1000, 1001),
                uuid="0d6c1c92-3f6e-4a55-9b1e-2b7a53d4c0aa", run_dir="/vms/a")
    args.update(overrides)
    return vm_libvirt.domain_xml("testfleet-a-12345678", "/vms/a/overlay.qcow2", **args)


def test_domain_xml_for_tcg_with_a_kernel_keys_and_forwards():
    root = ET.fromstring(_tcg_xml())
    assert root.tag == "domain" and root.get("type") == "qemu"  # TCG
    assert root.findtext("name") == "testfleet-a-12345678" and root.findtext("uuid").startswith("0d6c1c92")
    assert root.findtext("description") == "testfleet vm_instance, run directory /vms/a"
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "2048"
    assert root.findtext("vcpu") == "4"
    assert root.find("cpu").get("mode") == "maximum"  # -cpu max
    assert root.find("os/type").attrib == {"arch": "x86_64", "machine": "pc"} and root.findtext("os/type") == "hvm"
    assert root.findtext("os/kernel") == "/cache/boot/vmlinuz" and root.findtext("os/initrd") == "/cache/boot/initrd.img"
    assert root.findtext("os/cmdline") == "root=/dev/vda rw console=ttyS0" and root.find("os/boot") is None
    assert root.find("features/acpi") is not None
    # the overlay is the disk; the image is only its backing file (found by libvirt in the overlay)
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == "/vms/a/overlay.qcow2" and disk.find("driver").get("type") == "qcow2"
    assert disk.find("target").attrib == {"dev": "vda", "bus": "virtio"}
    assert root.find("devices/serial").get("type") == "file"
    assert root.find("devices/serial/source").get("path") == "/vms/a/serial.log"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    # the per-boot keys, as fw_cfg entries
    assert root.find("sysinfo").get("type") == "fwcfg"
    assert {entry.get("name"): entry.get("file") for entry in root.findall("sysinfo/entry")} == {
        "opt/org.testfleet/authorized_keys": "/vms/a/id_ed25519.pub",
        "opt/org.testfleet/ssh_host_ed25519_key": "/vms/a/host_ed25519"}
    # QEMU runs as the caller, and libvirt chowns nothing (not the cached image, not the keys)
    label = root.find("seclabel")
    assert label.attrib == {"type": "static", "model": "dac", "relabel": "no"} and label.findtext("label") == "+1000:+1001"
    # user networking with hostfwd, passed through (libvirt 9.0 ignores <portForward> without passt)
    args = [arg.get("value") for arg in root.findall("%scommandline/%sarg" % (QEMU, QEMU))]
    assert args == ["-netdev", "user,id=tfnet0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:40080-:80",
                    "-device", "virtio-net-pci,netdev=tfnet0,addr=0x1e"]
    assert args[1] == vm_run.user_netdev("tfnet0", 40022, [(40080, 80)])
    assert root.find("devices/interface") is None


def test_domain_xml_for_kvm_from_disk():
    root = ET.fromstring(vm_libvirt.domain_xml("testfleet-b-1", "/vms/b/overlay.qcow2", accel="kvm"))
    assert root.get("type") == "kvm" and root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    assert root.find("seclabel") is None and root.find("sysinfo") is None and root.find("devices/serial") is None
    assert root.find("devices/emulator") is None and root.find("uuid") is None
    args = [arg.get("value") for arg in root.findall("%scommandline/%sarg" % (QEMU, QEMU))]
    assert args[1] == "user,id=tfnet0"
    with pytest.raises(ValueError, match="accel must be kvm or tcg"):
        vm_libvirt.domain_xml("x", "/d.qcow2", accel="auto")


def test_domain_xml_escapes_what_it_is_given():
    text = _tcg_xml(run_dir="/vms/a&b<c", serial="/vms/a&b<c/serial.log")
    assert "a&amp;b&lt;c" in text
    assert ET.fromstring(text).find("devices/serial/source").get("path") == "/vms/a&b<c/serial.log"


@pytest.mark.skipif(not os.path.exists(SCHEMA), reason="libvirt's domain schema is not installed (libvirt-daemon)")
def test_domain_xml_is_valid_for_libvirt():
    etree = pytest.importorskip("lxml.etree")
    schema = etree.RelaxNG(etree.parse(SCHEMA))
    for text in (_tcg_xml(uuid=str(uuid.uuid4())), vm_libvirt.domain_xml("testfleet-b-1", "/b.qcow2", accel="kvm")):
        assert schema.validate(etree.fromstring(text.encode("utf-8"))), schema.error_log


def test_domain_names_are_per_run_directory():
    first = vm_libvirt.domain_name("job-1", "/root/.cache/testfleet/vms/job-1")
    assert first == vm_libvirt.domain_name("job-1", "/root/.cache/testfleet/vms/job-1")
    assert first.startswith("testfleet-job-1-") and len(first) == len("testfleet-job-1-") + 8
    assert first != vm_libvirt.domain_name("job-1", "/var/lib/testfleet-worker/vms/job-1")


def test_only_local_qemu_uris():
    for uri in ("qemu:///system", "qemu:///session", "qemu+unix:///system", "qemu+unix:///system?socket=/tmp/s"):
        assert vm_libvirt.check_uri(uri) == uri
    for uri in ("qemu+ssh://host/system", "qemu+tcp://10.0.0.1/system", "xen:///system", "", None):
        with pytest.raises(vm_run.VmError, match="local QEMU libvirtd"):
            vm_libvirt.check_uri(uri)


def test_choose_backend():
    calls = []

    def works(uri):
        calls.append(uri)
        return True, "libvirtd 9.0.0 answers on %s" % uri

    def fails(uri):
        calls.append(uri)
        return False, "no libvirtd answers on %s (Failed to connect socket)" % uri

    def no_binding(uri):
        return False, "the libvirt Python binding is not importable by /venv/bin/python (No module named 'libvirt')"

    assert vm_libvirt.choose_backend("qemu", probe=works) == ("qemu", "qemu asked for")
    assert calls == []  # qemu asked for: libvirt is not even looked at
    assert vm_libvirt.choose_backend("auto", "qemu:///system", probe=works) == (
        "libvirt", "auto: libvirtd 9.0.0 answers on qemu:///system")
    assert vm_libvirt.choose_backend("libvirt", "qemu:///session", probe=works)[0] == "libvirt"
    backend, reason = vm_libvirt.choose_backend("auto", "qemu:///system", probe=fails)
    assert backend == "qemu" and reason.startswith("auto: no libvirtd answers on qemu:///system") and "plain QEMU" in reason
    assert vm_libvirt.choose_backend("auto", probe=no_binding)[0] == "qemu"
    with pytest.raises(vm_run.VmError, match="backend libvirt: no libvirtd answers.*start libvirtd.*libvirtd -d"):
        vm_libvirt.choose_backend("libvirt", probe=fails)
    with pytest.raises(vm_run.VmError, match="not importable.*pip install libvirt-python.*libvirt-dev"):
        vm_libvirt.choose_backend("libvirt", probe=no_binding)
    with pytest.raises(ValueError, match="backend must be one of"):
        vm_libvirt.choose_backend("xen")


def test_probe_without_a_daemon(tmp_path):
    works, reason = vm_libvirt.probe_libvirt("qemu+unix:///system?socket=%s" % (tmp_path / "nobody-listens"))
    assert works is False
    if vm_libvirt.libvirt is None:
        assert "binding is not importable" in reason
    else:
        assert reason.startswith("no libvirtd answers on qemu+unix:///system") and "nobody-listens" in reason
    assert vm_libvirt.probe_libvirt("qemu+ssh://elsewhere/system")[0] is False


def test_small_helpers(tmp_path):
    assert vm_libvirt.version_text(9000000) == "9.0.0" and vm_libvirt.version_text(10010002) == "10.10.2"
    assert vm_libvirt.find_qemu_pid("testfleet-nothing-00000000") is None
    assert vm_libvirt.log_file("testfleet-a-1") == "/var/log/libvirt/qemu/testfleet-a-1.log"
    assert vm_libvirt.log_file("testfleet-a-1", "qemu:///session").endswith("/.cache/libvirt/qemu/log/testfleet-a-1.log")
    # no VM, or a qemu one: stop_detached is vm_run's
    run_dir = tmp_path / "gone"
    run_dir.mkdir()
    assert vm_detached.stop_detached(str(run_dir)) is False and not run_dir.exists()


# --- LibvirtMachine against a fake binding ------------------------------------------------------

class FakeError(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.message, self.code = message, code

    def get_error_message(self):
        return self.message

    def get_error_code(self):
        return self.code


class FakeDomain:
    def __init__(self, conn, xml):
        self.conn, self.xml, self.active = conn, xml, True

    def isActive(self):
        if self.conn.broken:
            raise FakeError("Cannot write data: Broken pipe")
        return self.active

    def destroy(self):
        if not self.active:
            raise FakeError("domain is not running", 55)
        self.active = False
        self.conn.log.append("destroy")


class FakeLibvirt:
    VIR_DOMAIN_START_AUTODESTROY = 2
    VIR_ERR_NO_DOMAIN = 42
    libvirtError = FakeError

    def __init__(self, taken=0):
        self.taken = taken  # createXML fails this many times as QEMU does with a port in use
        self.log = []
        self.domains = {}
        self.broken = False

    def open(self, uri):
        self.log.append("open %s" % uri)
        return self

    def close(self):
        self.log.append("close")

    def lookupByName(self, name):
        raise FakeError("Domain not found", self.VIR_ERR_NO_DOMAIN)

    def lookupByUUIDString(self, value):
        domain = self.domains.get(value)
        if domain is None or not domain.active:
            raise FakeError("Domain not found", self.VIR_ERR_NO_DOMAIN)
        return domain

    def createXML(self, xml, flags):
        self.log.append("createXML flags=%d" % flags)
        if self.taken:
            self.taken -= 1
            raise FakeError("internal error: qemu unexpectedly closed the monitor: Could not set up host forwarding "
                            "rule 'tcp:127.0.0.1:40022-:22'")
        domain = FakeDomain(self, xml)
        self.domains[ET.fromstring(xml).findtext("uuid")] = domain
        return domain


needs_tools = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("ssh-keygen")),
                                 reason="needs qemu-img and ssh-keygen (the overlay and the keys are real)")


@pytest.fixture
def blank_image(tmp_path):
    path = tmp_path / "blank.qcow2"
    vm_run._run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], "qemu-img")
    return str(path)


@needs_tools
def test_launch_is_a_transient_autodestroy_domain_and_retries_a_taken_port(tmp_path, blank_image, monkeypatch):
    fake = FakeLibvirt(taken=2)
    monkeypatch.setattr(vm_libvirt, "libvirt", fake)
    monkeypatch.setattr(vm_libvirt, "find_qemu_pid", lambda name, uri: None)
    vm = vm_libvirt.LibvirtMachine(blank_image, str(tmp_path / "run"), name="fake", uri="qemu:///system")
    with vm:
        # createXML (never defineXML) with autodestroy: the domain lives as long as this connection
        assert fake.log == ["open qemu:///system"] + ["createXML flags=2"] * 3
        assert vm.alive() and vm.start_seconds is not None
        root = ET.parse(vm.domain_file).getroot()
        assert root.findtext("name") == vm.domain_name == vm_libvirt.domain_name("fake", str(tmp_path / "run"))
        assert root.findtext("uuid") == vm.uuid
        assert root.find("devices/disk/source").get("file") == str(tmp_path / "run" / "overlay.qcow2")
        assert root.find("seclabel/label").text == "+%d:+%d" % (os.getuid(), os.getgid())
        assert "Port %d" % vm.target.port in (tmp_path / "run" / "ssh_config").read_text()
        info = vm.info()
        assert info["backend"] == "libvirt" and info["libvirt"]["uuid"] == vm.uuid
        assert info["libvirt"]["domain"] == vm.domain_name and info["qemu_pid"] is None
        assert "libvirt domain %s" % vm.domain_name in vm.describe_process()
    assert fake.log[-2:] == ["destroy", "close"]
    assert not (tmp_path / "run").exists()


@needs_tools
def test_a_broken_connection_ends_the_vm_and_a_new_one_destroys_it(tmp_path, blank_image, monkeypatch):
    fake = FakeLibvirt()
    monkeypatch.setattr(vm_libvirt, "libvirt", fake)
    monkeypatch.setattr(vm_libvirt, "find_qemu_pid", lambda name, uri: None)
    vm = vm_libvirt.LibvirtMachine(blank_image, str(tmp_path / "run"), name="lost", keep_run_dir=True)
    vm.start()
    fake.broken = True  # libvirtd restarted: it forgot autodestroy, the domain runs on
    assert not vm.alive() and "connection to libvirtd broke" in vm.exit_reason()
    fake.broken = False
    vm.stop()
    # a new connection destroys it; then both are closed
    assert fake.log[-4:] == ["open qemu:///system", "destroy", "close", "close"]
    assert (tmp_path / "run").exists() and not (tmp_path / "run" / "overlay.qcow2").exists()


def test_no_binding_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(vm_libvirt, "libvirt", None)
    monkeypatch.setattr(vm_libvirt, "LIBVIRT_IMPORT_ERROR", "No module named 'libvirt'")
    assert vm_libvirt.probe_libvirt()[0] is False
    vm = vm_libvirt.LibvirtMachine(str(tmp_path / "image.qcow2"), str(tmp_path / "run"), name="x")
    with pytest.raises(vm_run.VmError, match="pip install libvirt-python"):
        vm._launch()
