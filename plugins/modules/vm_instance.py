#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_instance
short_description: Boot a throwaway VM from a test image for a job, reachable over SSH, always torn down
version_added: 0.2.0
author:
  - testfleet developers (@testfleet)
description:
  - With O(state=started), boots a VM (plain QEMU or libvirt, see O(backend)) on a throwaway qcow2 overlay of O(image) (the
    image itself is never written), forwards a free port on 127.0.0.1 to the guest's SSH port,
    and returns once the guest runs a command over SSH, within O(boot_timeout) seconds. The
    result has what later tasks need to reach it (C(ssh), C(inventory_vars) for
    M(ansible.builtin.add_host), C(ssh_config) for C(ssh -F)).
  - Every boot gets a fresh SSH client key and host key, handed to the guest through QEMU's
    fw_cfg (images made by M(testfleet.infra.vm_image) install them at boot). So the host key is
    checked strictly, and no private key is shared between VMs or kept in an image.
  - KVM when a probe shows it works on this host, else TCG (C(-accel tcg -cpu max)); see O(accel).
  - Teardown is guaranteed. The VM runs under a small keeper process that stops it (and removes
    the overlay) on O(state=absent), when the C(ansible-playbook) that started it ends in any way
    (a cancelled or killed job included; see O(tie_to_playbook)), or after O(lifetime) seconds.
    QEMU also dies with its keeper, even on SIGKILL.
  - For images made by M(testfleet.infra.vm_image), the manifest next to the image says how to
    boot it; its kernel and initrd are extracted once per image into O(boot_cache_dir) (needs
    C(debugfs) of e2fsprogs and C(qemu-img)). Other images boot from their disk.
  - O(backend=qemu) runs QEMU itself (no daemon, any user, in group kvm for KVM). O(backend=libvirt) has
    libvirtd start QEMU as a transient domain (never defined) with autodestroy, on a connection the keeper
    holds, so libvirtd destroys the domain when the keeper stops it or dies in any way and the VM's life is
    bound to the job's with either backend. QEMU still runs as the module's user and libvirt relabels no
    file. O(backend=auto) (default) takes libvirt when a libvirtd answers on O(libvirt_uri) and the libvirt
    Python binding is importable, else plain QEMU.
  - The libvirt backend needs libvirtd (Debian package C(libvirt-daemon-system); without systemd start
    C(virtlogd -d) and C(libvirtd -d)), the binding in the Python that runs the module (PyPI C(libvirt-python),
    or Debian's C(python3-libvirt) for C(/usr/bin/python3)), and a local O(libvirt_uri). On hosts where the
    user in C(/etc/libvirt/qemu.conf) cannot open C(/dev/kvm), libvirt probes QEMU again on every start
    (about 45 s); set C(user) and C(group) to C(root) there, or make C(/dev/kvm) C(0660 root:kvm).
extends_documentation_fragment:
  - testfleet.infra.vm
  - ansible.builtin.action_common_attributes
options:
  name:
    description:
      - The VM's name, unique on this host under O(state_dir) (its run directory is
        C(<state_dir>/<name>)). 1-64 letters, digits, C(.), C(_), C(-).
    type: str
    required: true
  state:
    description:
      - C(started) boots the VM unless it already runs; C(absent) stops it and removes its run
        directory.
    type: str
    choices: [started, absent]
    default: started
  image:
    description:
      - The qcow2 image to boot (for example the C(path) that M(testfleet.infra.image_fetch)
        returns). Its manifest C(<name>-<sha256>.manifest.json) is read from the same directory
        when there is one. Required with O(state=started).
    type: path
  state_dir:
    description:
      - Where VMs' run directories are (overlay, keys, C(ssh_config), console log, state).
        Default C(~/.cache/testfleet/vms) of the user the module runs as.
    type: path
  boot_cache_dir:
    description:
      - Where kernels and initrds extracted from images are kept (one folder per image SHA-256).
        Default C(~/.cache/testfleet/vm-boot).
    type: path
  forward_ports:
    description:
      - Guest TCP ports (besides 22) to forward from free ports on 127.0.0.1; C(forwarded_ports)
        says which.
    type: list
    elements: int
    default: []
  boot_timeout:
    description: Seconds to wait for the guest to answer over SSH before the VM is stopped and the task fails.
    type: int
    default: 300
  lifetime:
    description: Seconds after which the VM is stopped whatever happens (0 for no limit).
    type: int
    default: 10800
  tie_to_playbook:
    description:
      - Stop the VM when the C(ansible-playbook) process that started it ends (normally, cancelled
        or killed). Set to false to keep a VM for later playbooks (then only O(state=absent) and
        O(lifetime) stop it).
    type: bool
    default: true
  user:
    description: The user to log in as. Default the image manifest's C(user), else C(tester).
    type: str
  kernel:
    description: Boot this kernel (a host file) instead of what the manifest says.
    type: path
  initrd:
    description: The initrd that goes with O(kernel).
    type: path
  cmdline:
    description: The kernel command line with O(kernel) (default C(root=/dev/vda rw console=ttyS0)).
    type: str
  backend:
    description:
      - What starts QEMU. C(qemu) runs it directly (under the keeper process). C(libvirt) has libvirtd
        on O(libvirt_uri) start it as a transient domain with autodestroy, and fails with what to install
        or start when there is no libvirtd or no libvirt Python binding. C(auto) is C(libvirt) when a
        libvirtd answers on O(libvirt_uri) and the binding imports, else C(qemu); C(backend_reason) says why.
      - A VM that runs with another backend than one asked for explicitly is stopped and started again.
      - With C(libvirt), O(qemu) is the domain's C(<emulator>).
    type: str
    choices: [auto, qemu, libvirt]
    default: auto
  libvirt_uri:
    description:
      - The libvirt connection URI of the libvirt backend. Only local QEMU URIs (C(qemu:///system),
        C(qemu:///session)), since the overlay, the keys and the forwarded ports are on this host.
    type: str
    default: qemu:///system
attributes:
  platform:
    platforms: posix
  check_mode:
    support: full
    details: Reports whether the VM would be started or stopped; starts and stops nothing.
  diff_mode:
    support: full
    details: The VM's state (running or absent) before and after.
seealso:
  - module: testfleet.infra.vm_image
  - module: testfleet.infra.image_fetch
  - module: community.libvirt.virt
    description: To look at libvirt's domains (C(command=list_vms), C(command=status)).
requirements:
  - qemu-img, ssh and ssh-keygen on the host (Debian packages qemu-utils, openssh-client)
  - the QEMU system emulator (qemu-system-x86)
  - for O(backend=libvirt), a libvirtd on O(libvirt_uri) and the libvirt Python binding (libvirt-python)
"""

EXAMPLES = r"""
- name: Fetch the job's image into the worker's cache
  testfleet.infra.image_fetch:
    store_url: s3://testfleet-images/images
    name: debian-12-3c2f...e1
  register: image

- name: Run the tests in a VM, torn down whatever happens
  block:
    - name: Boot a throwaway VM of the image
      testfleet.infra.vm_instance:
        name: "job-{{ job_id }}"
        image: "{{ image.path }}"
      register: vm

    - name: Make the VM a host of this play
      ansible.builtin.add_host:
        name: testvm
        groups: [vms]
        ansible_host: "{{ vm.inventory_vars.ansible_host }}"
        ansible_port: "{{ vm.inventory_vars.ansible_port }}"
        ansible_user: "{{ vm.inventory_vars.ansible_user }}"
        ansible_ssh_private_key_file: "{{ vm.inventory_vars.ansible_ssh_private_key_file }}"
        ansible_ssh_common_args: "{{ vm.inventory_vars.ansible_ssh_common_args }}"

    - name: Run the test suite in the VM
      ansible.builtin.command:
        argv: [ssh, -F, "{{ vm.ssh_config }}", "{{ vm.name }}", "cd project && make check"]
      changed_when: false
  always:
    - name: Stop the VM
      testfleet.infra.vm_instance:
        name: "job-{{ job_id }}"
        state: absent

- name: Boot through libvirt, and fail (saying what to install or start) when there is no libvirtd
  testfleet.infra.vm_instance:
    name: "job-{{ job_id }}"
    image: "{{ image.path }}"
    backend: libvirt
    libvirt_uri: qemu:///system
  register: vm

- name: Look at it with community.libvirt (a transient domain, gone once stopped)
  community.libvirt.virt:
    command: status
    name: "{{ vm.libvirt.domain }}"
    uri: "{{ vm.libvirt.uri }}"
  when: vm.backend == 'libvirt'
"""

RETURN = r"""
name:
  description: The VM's name (also the host name in C(ssh_config)).
  returned: always
  type: str
state:
  description: C(running) or C(absent).
  returned: always
  type: str
run_dir:
  description: The VM's run directory.
  returned: always
  type: str
ssh:
  description: How to reach the guest's sshd.
  returned: when started
  type: dict
  sample: {host: 127.0.0.1, port: 40123, user: tester, private_key_file: /root/.cache/testfleet/vms/job-1/id_ed25519,
           known_hosts_file: /root/.cache/testfleet/vms/job-1/known_hosts, host_key_alias: testfleet-vm-job-1}
ssh_config:
  description: An OpenSSH client config with one host, the VM's name (C(ssh -F <ssh_config> <name> command)).
  returned: when started
  type: str
inventory_vars:
  description: Connection variables for M(ansible.builtin.add_host) (C(ansible_host), C(ansible_port), C(ansible_user),
    C(ansible_ssh_private_key_file), C(ansible_ssh_common_args)).
  returned: when started
  type: dict
forwarded_ports:
  description: Guest port -> port on 127.0.0.1, for O(forward_ports).
  returned: when started
  type: dict
accel:
  description: C(kvm) or C(tcg), and C(accel_reason) says why.
  returned: when started
  type: str
accel_reason:
  description: Why this acceleration was used.
  returned: when started
  type: str
boot_to_ssh_s:
  description: Seconds from QEMU's start until the guest ran a command over SSH (when this task started the VM).
  returned: when started
  type: float
keeper_pid:
  description: The process that keeps the VM (SIGTERM stops the VM).
  returned: when started
  type: int
qemu_pid:
  description: QEMU's process (with the qemu backend, the leader of its own process group; with libvirt, a child
    of libvirtd, or null when it cannot be found).
  returned: when started
  type: int
backend:
  description: What started QEMU, C(qemu) or C(libvirt) (see O(backend)), and C(backend_reason) says why.
  returned: when started, also in check mode
  type: str
backend_reason:
  description: Why this backend was used (for C(auto), whether a libvirtd answered).
  returned: when started, also in check mode
  type: str
libvirt:
  description: The libvirt domain, with the libvirt backend.
  returned: when started with O(backend=libvirt) or O(backend=auto) and libvirt was used
  type: dict
  contains:
    uri:
      description: The connection URI.
      type: str
    domain:
      description: The transient domain's name, C(testfleet-<name>-<hash of the run directory>).
      type: str
    uuid:
      description: The domain's UUID.
      type: str
    start_s:
      description: Seconds C(virDomainCreateXML) took (libvirt's preparation and QEMU's start).
      type: float
    domain_xml:
      description: The domain's XML, kept in the run directory.
      type: str
    log:
      description: The file where libvirtd keeps QEMU's own messages for this domain.
      type: str
  sample: {uri: "qemu:///system", domain: testfleet-job-1-3f2a9c1b, uuid: 0d6c1c92-3f6e-4a55-9b1e-2b7a53d4c0aa,
           start_s: 0.52, domain_xml: /root/.cache/testfleet/vms/job-1/domain.xml,
           log: /var/log/libvirt/qemu/testfleet-job-1-3f2a9c1b.log}
console_log:
  description: The guest's serial console.
  returned: when started
  type: str
"""

import json
import os
import pwd
import time

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule
from ansible_collections.testfleet.infra.plugins.module_utils.vm import libvirt_domain as vm_libvirt
from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming
from ansible_collections.testfleet.infra.plugins.module_utils.vm import detached as vm_detached


def _manifest_of(image):
    try:
        ref = image_naming.parse_image_file_name(os.path.basename(image))
    except image_naming.ImageNameError:
        return None
    path = os.path.join(os.path.dirname(image), ref.manifest_file)
    try:
        with open(path, "rb") as handle:
            return image_naming.parse_manifest(handle.read(), ref, source=path)
    except OSError:
        return None


def _started_result(state, run_dir):
    target = vm_run.SshTarget.from_description(state["ssh"])
    result = dict(state="running", run_dir=run_dir, ssh=target.describe(), ssh_config=os.path.join(run_dir, "ssh_config"),
                  inventory_vars=target.ansible_vars(), forwarded_ports={str(k): v for k, v in state["forwards"].items()},
                  accel=state["accel"], accel_reason=state["accel_reason"], keeper_pid=state["keeper_pid"],
                  qemu_pid=state["qemu_pid"], console_log=state["console"], image=state["image"],
                  boot_to_ssh_s=state.get("boot_to_ssh_s"), backend=state.get("backend", "qemu"),
                  backend_reason=state.get("backend_reason"))
    if state.get("libvirt"):
        result["libvirt"] = state["libvirt"]
    return result


def _vm_alive(state):
    """QEMU runs (when its pid is known: always with the qemu backend), else its keeper does
    (the keeper of a libvirt VM ends when the domain ends)."""
    if state.get("qemu_pid"):
        return vm_processes.process_alive(state["qemu_pid"], state["qemu_start"])
    return vm_processes.process_alive(state["keeper_pid"], state["keeper_start"])


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", choices=["started", "absent"], default="started"),
            image=dict(type="path"),
            state_dir=dict(type="path"),
            boot_cache_dir=dict(type="path"),
            forward_ports=dict(type="list", elements="int", default=[]),
            boot_timeout=dict(type="int", default=300),
            lifetime=dict(type="int", default=10800),
            tie_to_playbook=dict(type="bool", default=True),
            user=dict(type="str"),
            kernel=dict(type="path"),
            initrd=dict(type="path"),
            cmdline=dict(type="str"),
            backend=dict(type="str", choices=["auto", "qemu", "libvirt"], default="auto"),
            libvirt_uri=dict(type="str", default=vm_libvirt.DEFAULT_URI),
        ),
        required_if=[("state", "started", ("image",))],
        families=("vm",),
        supports_check_mode=True,
    )
    params = module.params
    home = os.path.join(os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir, ".cache", "testfleet")
    state_dir = params["state_dir"] or os.path.join(home, "vms")
    try:
        run_dir = vm_run.instance_dir(state_dir, params["name"])
    except vm_run.VmError as exc:
        module.fail_json(msg=str(exc))
    current = vm_detached.read_state(run_dir)
    running = bool(current and current["running"] and current.get("state") == "running")
    result = dict(changed=False, name=params["name"], run_dir=run_dir)

    if params["state"] == "absent":
        exists = current is not None or os.path.isdir(run_dir)
        result.update(changed=exists, state="absent",
                      diff={"before": {"state": "running" if running else ("stopped" if exists else "absent")},
                            "after": {"state": "absent"}})
        if exists and not module.check_mode:
            try:
                vm_detached.stop_detached(run_dir)
            except vm_run.VmError as exc:
                module.fail_json(msg=str(exc), **result)
        module.exit_json(**result)

    image = os.path.abspath(params["image"])
    current_backend = current.get("backend", "qemu") if current else None
    if running and current.get("image") == image and params["backend"] in ("auto", current_backend):
        result.update(_started_result(current, run_dir))
        result["boot_to_ssh_s"] = None
        module.exit_json(**result)
    try:
        backend, backend_reason = vm_libvirt.choose_backend(params["backend"], params["libvirt_uri"])
    except vm_run.VmError as exc:
        module.fail_json(msg=str(exc), **result)
    result.update(changed=True, state="running", backend=backend, backend_reason=backend_reason,
                  diff={"before": {"state": "running" if running else "absent",
                                   "image": current.get("image") if current else None,
                                   "backend": current_backend if running else None},
                        "after": {"state": "running", "image": image, "backend": backend}})
    if module.check_mode:
        module.exit_json(**result)
    if not os.path.isfile(image):
        module.fail_json(msg="no image at %s" % image, **result)
    for tool in (params["qemu"], "qemu-img", "ssh", "ssh-keygen"):
        if module.get_bin_path(tool) is None:
            module.fail_json(msg="%s is not installed (Debian packages qemu-system-x86, qemu-utils, openssh-client)"
                             % tool, **result)

    try:
        if current is not None or os.path.isdir(run_dir):
            vm_detached.stop_detached(run_dir)  # a stopped VM, or one of another image or backend
        manifest = _manifest_of(image)
        boot = vm_run.boot_spec(image, manifest, params["boot_cache_dir"] or os.path.join(home, "vm-boot"),
                                kernel=params["kernel"], initrd=params["initrd"], cmdline=params["cmdline"])
        settings = module.vm_settings(home)
        accel, reason = vm_run.choose_accel(settings["accel"], kernel=boot.get("kernel_file"),
                                            probe_file=settings["kvm_probe_file"], qemu=settings["qemu"])
        user = params["user"] or (manifest or {}).get("user") or "tester"
        machine = dict(boot=boot, user=user, accel=accel, accel_reason=reason, memory=settings["memory"],
                       cpus=settings["cpus"], forwards=params["forward_ports"], qemu=settings["qemu"],
                       name=params["name"], keep_run_dir=True)
        if backend == "libvirt":
            vm = vm_libvirt.LibvirtMachine(image, run_dir, uri=params["libvirt_uri"], **machine)
        else:
            vm = vm_run.VirtualMachine(image, run_dir, **machine)
        owner = vm_processes.find_playbook_pid() if params["tie_to_playbook"] else None
        state = vm_detached.start_detached(vm, owner_pid=owner, lifetime=params["lifetime"] or None)
    except vm_run.VmError as exc:
        module.fail_json(msg="cannot start the VM %s (%s backend: %s): %s" % (params["name"], backend, backend_reason,
                                                                              exc), **result)
    state["backend_reason"] = backend_reason

    target = vm_run.SshTarget.from_description(state["ssh"])
    try:
        vm_run.wait_for_ssh(target, time.monotonic() + params["boot_timeout"], lambda: _vm_alive(state),
                            state["console"])
    except vm_run.VmError as exc:
        vm_detached.stop_detached(run_dir)
        module.fail_json(msg="the VM %s (%s: %s; %s backend) did not come up: %s"
                         % (params["name"], accel, reason, backend, exc), **result)
    state["boot_to_ssh_s"] = round(time.time() - state["started_at"], 2)
    files.write_atomic(os.path.join(run_dir, vm_detached.STATE_FILE), json.dumps(state, indent=1, sort_keys=True) + "\n",
                       mode=0o644)
    result.update(_started_result(state, run_dir))
    result["owner_pid"] = owner
    module.exit_json(**result)


if __name__ == "__main__":
    main()
