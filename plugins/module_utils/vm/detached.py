# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A VM that outlives the call (a job's later tasks use it): its keeper, its state, stopping it.

:func:`start_detached` starts a :class:`vm_run.VirtualMachine` (plain QEMU) or a
``vm_libvirt.LibvirtMachine`` under a small keeper process that stops it when asked
(:func:`stop_detached`), when its owner (the ``ansible-playbook`` process, so a cancelled job)
goes away, or after ``lifetime`` seconds. The keeper writes :data:`STATE_FILE` in the VM's run
directory (:func:`read_state`). :func:`stop_detached` stops a VM of either backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import time

from ansible_collections.testfleet.infra.plugins.module_utils.vm import libvirt_domain as vm_libvirt
from ansible_collections.testfleet.infra.plugins.module_utils.vm import run as vm_run
from ansible_collections.testfleet.infra.plugins.module_utils.vm import processes as vm_processes

STATE_FILE = "instance.json"


def start_detached(vm, owner_pid=None, lifetime=None, ready_timeout=60.0):
    """Start ``vm`` (a VirtualMachine, not started) under a keeper process that outlives this
    one; return the instance's state (also in ``<run dir>/instance.json``).

    The keeper (its own session; stdout and stderr in ``<run dir>/keeper.log``) stops the VM
    and removes its run directory when it gets SIGTERM, SIGINT or SIGHUP (:func:`stop_detached`),
    when ``owner_pid`` ends, or after ``lifetime`` seconds. When QEMU ends by itself, the run
    directory stays (state ``stopped``, the console log) until :func:`stop_detached`. QEMU dies
    with the keeper (PR_SET_PDEATHSIG), even when the keeper is killed with SIGKILL.
    """
    os.makedirs(vm.run_dir, mode=0o700, exist_ok=True)
    owner_start = vm_processes.process_start_time(owner_pid) if owner_pid else None
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked processes
        try:
            os.close(read_end)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _keeper(vm, write_end, owner_pid, owner_start, lifetime)
        finally:
            os._exit(1)
    os.close(write_end)
    os.waitpid(child, 0)
    chunks = []
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise vm_run.VmError("the VM keeper did not report within %d s (see %s)"
                                     % (ready_timeout, os.path.join(vm.run_dir, "keeper.log")))
            ready, dummy, dummy = select.select([read_end], [], [], left)
            if not ready:
                continue
            data = os.read(read_end, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(read_end)
    try:
        report = json.loads(b"".join(chunks).decode("utf-8"))
    except ValueError:
        raise vm_run.VmError("the VM keeper ended without a report: %s" % vm_run.file_tail(os.path.join(vm.run_dir, "keeper.log")))
    if not report.get("ok"):
        raise vm_run.VmError(report.get("error") or "the VM did not start")
    return report["state"]


def _log_line(text):
    """A line to the keeper's log (its stdout)."""
    with contextlib.suppress(OSError):
        os.write(1, ("%s keeper %d: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), os.getpid(), text)).encode("utf-8"))


def _keeper(vm, report_fd, owner_pid, owner_start, lifetime):  # pragma: no cover - runs in the forked keeper
    log = os.open(os.path.join(vm.run_dir, "keeper.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for fd in (null, log):
        os.close(fd)
    os.closerange(3, report_fd)
    os.closerange(report_fd + 1, 65536)
    stop = {"reason": None}

    def on_signal(signum, frame):
        stop["reason"] = stop["reason"] or "asked to stop (signal %d)" % signum

    for signum in vm_run.STOP_SIGNALS:
        signal.signal(signum, on_signal)
    vm_run.SIGNAL_GUARD["installed"] = True  # this process handles its own signals
    state_path = os.path.join(vm.run_dir, STATE_FILE)
    try:
        vm.start()
        state = vm.info()
        state.update(state="running", keeper_pid=os.getpid(), keeper_start=vm_processes.process_start_time(os.getpid()),
                     owner_pid=owner_pid, owner_start=owner_start, started_at=time.time(),
                     deadline=time.time() + lifetime if lifetime else None)
        vm_run.write_json(state_path, state)
        os.write(report_fd, json.dumps({"ok": True, "state": state}).encode("utf-8"))
    except BaseException as exc:  # report anything, then end
        with contextlib.suppress(OSError):
            os.write(report_fd, json.dumps({"ok": False, "error": str(exc) or type(exc).__name__}).encode("utf-8"))
        with contextlib.suppress(Exception):
            vm.stop()
        os._exit(1)
    os.close(report_fd)
    _log_line("VM %s runs (%s, ssh port %d)" % (vm.name, vm.describe_process(), vm.target.port))
    crashed = False
    while stop["reason"] is None:
        if not vm.alive():
            crashed = True
            stop["reason"] = vm.exit_reason()
        elif owner_pid and not vm_processes.process_alive(owner_pid, owner_start):
            stop["reason"] = "its owner (pid %d) ended" % owner_pid
        elif state.get("deadline") and time.time() > state["deadline"]:
            stop["reason"] = "its lifetime of %d s is over" % lifetime
        else:
            time.sleep(1.0)
    _log_line("stopping the VM: %s" % stop["reason"])
    # a VM that ended by itself keeps its run directory (console log) until state=absent
    vm.keep_run_dir = crashed
    with contextlib.suppress(Exception):
        vm.stop()
    if crashed:
        state.update(state="stopped", reason=stop["reason"], stopped_at=time.time())
        with contextlib.suppress(OSError):
            vm_run.write_json(state_path, state)
    os._exit(0)


def read_state(run_dir):
    """The state of a detached VM (``instance.json``), with ``running`` (its keeper or QEMU
    still runs), or None when there is none."""
    state = vm_run.read_json(os.path.join(run_dir, STATE_FILE))
    if not isinstance(state, dict):
        return None
    state["running"] = bool(vm_processes.process_alive(state.get("keeper_pid"), state.get("keeper_start"))
                            or vm_processes.process_alive(state.get("qemu_pid"), state.get("qemu_start")))
    return state


def _stop_keeper(run_dir, timeout=30.0):
    """Stop the detached VM of ``run_dir`` (if any) and remove ``run_dir``. Returns True when a
    VM was running. Only the processes recorded in its state (pid and start time) are signalled."""
    state = read_state(run_dir)
    was_running = bool(state and state["running"])
    if state:
        keeper, keeper_start = state.get("keeper_pid"), state.get("keeper_start")
        qemu_pid, qemu_start = state.get("qemu_pid"), state.get("qemu_start")
        if vm_processes.process_alive(keeper, keeper_start):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(keeper, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (vm_processes.process_alive(keeper, keeper_start)
                                               or vm_processes.process_alive(qemu_pid, qemu_start)):
            time.sleep(0.2)
        # QEMU started by libvirtd is not the leader of a process group of its own
        own_group = state.get("backend", "qemu") == "qemu"
        for pid, start, group in ((qemu_pid, qemu_start, own_group), (keeper, keeper_start, False)):
            if vm_processes.process_alive(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if group:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        if os.path.exists(run_dir):
            raise vm_run.VmError("cannot remove %s" % run_dir)
    return was_running


def stop_detached(run_dir, timeout=30.0):
    """Stop the detached VM of ``run_dir``, of either backend, and remove its run directory.

    Its keeper is asked to stop it (SIGTERM, then SIGKILL after ``timeout`` s; QEMU dies with
    it). For a libvirt VM, a domain still there afterwards (its keeper was lost) is destroyed by
    UUID. Returns True when a VM was running."""
    state = read_state(run_dir)
    if not state or state.get("backend") != "libvirt":
        return _stop_keeper(run_dir, timeout=timeout)
    keeper, keeper_start = state.get("keeper_pid"), state.get("keeper_start")
    if vm_processes.process_alive(keeper, keeper_start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(keeper, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and vm_processes.process_alive(keeper, keeper_start):
            time.sleep(0.2)
        if vm_processes.process_alive(keeper, keeper_start):  # its connection closes: libvirtd destroys the domain
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(keeper, signal.SIGKILL)
    details = state.get("libvirt") or {}
    if details.get("uuid") and vm_libvirt.libvirt is not None:
        with contextlib.suppress(vm_run.VmError):
            vm_libvirt.destroy_domain(details.get("uri") or vm_libvirt.DEFAULT_URI, details["uuid"], attempts=3, delay=1.0)
    return _stop_keeper(run_dir, timeout=timeout) or state["running"]
