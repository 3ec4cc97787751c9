# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The QEMU VM options of vm_image (its boot check) and vm_instance (the vm family of
    # module_utils/module.py).
    DOCUMENTATION = r"""
options:
  accel:
    description:
      - How the VM runs. C(auto) uses KVM only when a probe (a kernel booted under KVM) shows it
        works here, else TCG (C(-accel tcg -cpu max)); the probe's result is kept in
        O(kvm_probe_file).
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  kvm_probe_file:
    description:
      - Where the KVM probe's result is read from and kept, a JSON object with the keys C(kvm)
        (true or false) and C(reason). A worker can pass the file its role keeps
        (C(<worker_home>/kvm-probe.json)). Delete it to probe again.
      - Default C(kvm-probe.json) in the module's cache directory (C(<cache_dir>/kvm-probe.json)
        for M(testfleet.infra.vm_image), C(~/.cache/testfleet/kvm-probe.json) for
        M(testfleet.infra.vm_instance)).
    type: path
  memory:
    description:
      - MiB of memory of the VM.
    type: int
    default: 1024
  cpus:
    description:
      - Virtual CPUs of the VM.
    type: int
    default: 2
  qemu:
    description:
      - The QEMU system emulator to run.
    type: str
    default: qemu-system-x86_64
"""
