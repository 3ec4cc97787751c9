# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bookkeeping of an image build: :class:`Steps` (progress, timings, commands and their
output), the build lock, :class:`BuildError`, and the small file helpers the steps share
(writing into a root file system without leaving it, removing a tree with mounts under it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import time


class BuildError(Exception):
    """A build step failed; ``str()`` says which and shows the end of its output."""


# --- helpers of the build -----------------------------------------------------------------------

class Steps:
    """Progress of a build: one line per step start and end in the progress log (``tail -f``
    it), also handed to ``log`` (the module's ``module.log``); ``timings`` maps step -> seconds.
    Commands' full output goes to ``output_path``."""

    def __init__(self, progress, output_path, log=None, clock=time.monotonic):
        self.progress = progress
        self.output_path = output_path
        self.log = log
        self.clock = clock
        self.timings = {}
        self.started = clock()

    def note(self, text):
        if self.progress is not None:
            self.progress.note(text)
        if self.log is not None:
            self.log(text)

    @contextlib.contextmanager
    def step(self, name, what):
        began = self.clock()
        self.note("%s: %s" % (name, what))
        try:
            yield
        except BaseException as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.note("%s: failed after %.1f s: %s" % (name, self.clock() - began, first))
            raise
        seconds = self.clock() - began
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)
        self.note("%s: done in %.1f s" % (name, seconds))

    def run(self, argv, what, timeout=3600, env=None, cwd=None, input_data=None):
        """Run a command, its output appended to the output log; raise BuildError on failure."""
        with open(self.output_path, "ab") as output:
            output.write(("\n$ %s\n" % " ".join(shlex.quote(str(arg)) for arg in argv)).encode("utf-8"))
            output.flush()
            start = output.tell()
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, timeout=timeout, env=env, cwd=cwd,
                                      input=input_data, check=False)
            except subprocess.TimeoutExpired:
                raise BuildError("%s did not finish within %d s (output: %s)" % (what, timeout, self.output_path))
            except OSError as exc:
                raise BuildError("%s: cannot run %s: %s" % (what, argv[0], exc.strerror or exc))
        if proc.returncode != 0:
            raise BuildError("%s failed (exit %d): %s (whole output: %s)" % (
                what, proc.returncode, output_tail(self.output_path, start), self.output_path))


def output_tail(path, start=0, lines=15):
    try:
        with open(path, "rb") as handle:
            handle.seek(max(start, os.path.getsize(path) - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def locked(path, timeout=3600.0, what="the build"):
    """An exclusive fcntl lock on ``path`` (created), waiting up to ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError("%s: %s is locked by another build for more than %d s" % (what, path, timeout))
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def mounts_under(path):
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mounts") as handle:
            for line in handle:
                point = line.split()[1].replace("\\040", " ")
                if point == path or point.startswith(path + "/"):
                    found.append(point)
    except OSError:
        pass
    return found


def remove_tree(path):
    """Remove a build tree, never through a mount point (a left bind mount would be followed)."""
    if not os.path.lexists(path):
        return
    for point in sorted(mounts_under(path), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    left = mounts_under(path)
    if left:
        raise BuildError("%s still has mounts (%s): not removing it" % (path, ", ".join(left)))
    shutil.rmtree(path, ignore_errors=True)


def chroot_env(extra=None):
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
    env.update(extra or {})
    return env


def write_file(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.islink(path):
        os.unlink(path)
    with open(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.chmod(path, mode)


def path_inside(rootfs, path):
    """``path`` of the image, as a host path under ``rootfs``, refusing escapes through symlinks."""
    parent = os.path.realpath(os.path.join(rootfs, os.path.dirname(path).lstrip("/")))
    root = os.path.realpath(rootfs)
    if parent != root and not parent.startswith(root + "/"):
        raise BuildError("%s leads out of the image (through a symlink)" % path)
    return os.path.join(parent, os.path.basename(path))


def hostname_for(name):
    return (re.sub(r"[^a-z0-9-]", "-", name).strip("-") or "testvm")[:63]
