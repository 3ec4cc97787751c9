# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image cache of a worker: verified copies of store images in one local directory.

Layout of a cache directory::

    <name>-<sha256>.qcow2              a verified image, read-only (mode 0444)
    <name>-<sha256>.manifest.json      its manifest, as stored
    fetch.log                          progress lines of downloads and verifications
    .state/<name>-<sha256>.qcow2.lock      the image's lock (fcntl.flock)
    .state/<name>-<sha256>.qcow2.part      a download in progress or interrupted (resumed)
    .state/<name>-<sha256>.qcow2.verified  the sidecar: identity of the file when it was last
                                           hashed, and when the image was last used

Every fetch of an image holds that image's lock, so parallel jobs on one host download it once:
the others wait, then find it cached. A fetch resumes an interrupted download from the size of
its ``.part`` file (a ranged read of the store), hashes the bytes as they arrive (the old part
first) and renames the file to its final name only when all its bytes hash to the SHA-256 in the
name. A download that does not match is thrown away; if it had been resumed, it is fetched once
more from scratch before the fetch fails.

Cheap verification: hashing a multi-GB image on every use would cost seconds, so after a full
hash the sidecar keeps the file's size, mtime and ctime (nanoseconds), inode and device. A
cached file whose identity still matches its sidecar is trusted; any write, truncation,
replacement, ``touch`` or chmod changes the ctime (which no user can set back), so the next fetch
hashes the file again and replaces it when it no longer matches. What this does not catch is
corruption below the filesystem (a failing disk): ``verify=full`` hashes on every fetch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time

from ansible_collections.testfleet.infra.plugins.module_utils.files import remove_quietly, rename_into_place, write_atomic
from ansible_collections.testfleet.infra.plugins.module_utils.images.naming import (
    CHUNK,
    ImageError,
    ImageNameError,
    file_sha256,
    manifest_bytes,
    parse_image_file_name,
    parse_manifest,
    utc_now_iso,
)
from ansible_collections.testfleet.infra.plugins.module_utils.images.store import (
    ImageNotFound,
    ImageStoreError,
    IntegrityError,
)

STATE = ".state"
PROGRESS_LOG = "fetch.log"
VERIFY_MODES = ("sidecar", "full")


class CacheBusy(ImageError):
    """The image's lock is held by another process (longer than the timeout)."""


class _Transfer(Exception):
    """A transfer failed after ``count`` bytes arrived (``error`` says why): resume it."""

    def __init__(self, error, count):
        super().__init__(str(error))
        self.error = error
        self.count = count


class ProgressLog:
    """Writes a progress line to a file every ``interval`` seconds of a long transfer.

    A module cannot stream output while it runs, so a person follows ``tail -f`` of this file
    (each line is one ``write`` of less than 512 bytes in append mode: lines of parallel
    fetches do not interleave). Called as ``progress(phase, done_bytes, total_bytes)``.
    """

    def __init__(self, path, label, interval=10.0, clock=time.monotonic):
        self.path = path
        self.label = label
        self.interval = interval
        self.clock = clock
        self.phase = None
        self.phase_start = self.last = 0.0
        self.phase_done = 0
        self.lines = 0

    def note(self, text):
        line = ("%s [%d] %s: %s" % (utc_now_iso(), os.getpid(), self.label, " ".join(text.split()))).encode("utf-8")
        if len(line) > 500:  # short lines, one O_APPEND write each: parallel fetches never split a line
            line = line[:497].decode("utf-8", "ignore").encode("utf-8") + b"..."
        line += b"\n"
        if self.path is None:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self.lines += 1
        except OSError:
            pass  # progress is a courtesy: never fail a fetch for it

    def __call__(self, phase, done, total):
        now = self.clock()
        if phase != self.phase:
            self.phase, self.phase_start, self.phase_done, self.last = phase, now, done, now
            self.note("%s %s" % (phase, _size(total)))
            return
        if done < total and now - self.last < self.interval:
            return
        self.last = now
        seconds = max(now - self.phase_start, 1e-6)
        rate = (done - self.phase_done) / seconds
        text = "%s %s of %s (%.0f%%), %s/s" % (phase, _size(done), _size(total), 100.0 * done / total if total else 100.0,
                                               _size(rate))
        if done < total and rate > 0:
            text += ", about %.0f s left" % ((total - done) / rate)
        self.note(text)


def _size(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (count, unit)
        count /= 1024.0
    return str(count)


def _identity(stat):
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns,
            "ino": stat.st_ino, "dev": stat.st_dev}


class ImageCache:
    """A cache directory (see the module docstring for its layout)."""

    def __init__(self, root):
        self.root = os.path.abspath(root)

    def __repr__(self):
        return "ImageCache(%r)" % self.root

    # -- paths --
    def image_path(self, ref):
        return os.path.join(self.root, ref.image_file)

    def manifest_path(self, ref):
        return os.path.join(self.root, ref.manifest_file)

    def _state(self, ref, suffix):
        return os.path.join(self.root, STATE, ref.image_file + suffix)

    def lock_path(self, ref):
        return self._state(ref, ".lock")

    def partial_path(self, ref):
        return self._state(ref, ".part")

    def sidecar_path(self, ref):
        return self._state(ref, ".verified")

    def progress_log_path(self):
        return os.path.join(self.root, PROGRESS_LOG)

    def prepare(self):
        for folder in (self.root, os.path.join(self.root, STATE)):
            try:
                os.makedirs(folder, mode=0o755, exist_ok=True)
            except OSError as exc:
                raise ImageError("cannot create the image cache %s: %s" % (folder, exc.strerror or exc))

    # -- locking --
    @contextlib.contextmanager
    def lock(self, ref, timeout=3600.0, sleep=time.sleep):
        """Hold the image's lock (``flock``, exclusive); yield the seconds waited for it.

        ``timeout`` 0 tries once. Raises CacheBusy when it is not free in time. A lock file
        removed by a prune while this waited is not trusted: the current one is locked instead.
        """
        path = self.lock_path(ref)
        start = time.monotonic()
        delay = 0.02
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ImageError("cannot open the lock %s: %s" % (path, exc.strerror or exc))
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            raise ImageError("cannot lock %s: %s" % (path, exc.strerror or exc))
                    if time.monotonic() - start >= timeout:
                        raise CacheBusy("%s is locked by another fetch or prune (waited %.0f s)" % (path, timeout))
                    sleep(delay)
                    delay = min(delay * 2, 0.5)
                try:
                    current = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                break
            os.close(fd)
        try:
            yield time.monotonic() - start
        finally:
            os.close(fd)

    # -- the sidecar --
    def _read_sidecar(self, ref):
        try:
            with open(self.sidecar_path(ref), "rb") as handle:
                data = json.loads(handle.read().decode("utf-8"))
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _write_sidecar(self, ref, stat, used_at=None, verified_at=None):
        data = dict(_identity(stat), sha256=ref.sha256, verified_at=verified_at or time.time(),
                    used_at=used_at or time.time())
        write_atomic(self.sidecar_path(ref), json.dumps(data, sort_keys=True), mode=0o644)

    def _sidecar_matches(self, ref, stat):
        data = self._read_sidecar(ref)
        if not data or data.get("sha256") != ref.sha256:
            return False, data
        return all(data.get(key) == value for key, value in _identity(stat).items()), data

    def check(self, ref, full=False, progress=None, record=True):
        """State of the cached copy of ``ref``: ``("missing"|"ok"|"corrupt", how)``, ``how``
        being ``"sidecar"`` (trusted unchanged) or ``"hash"`` (hashed now). A good hash is
        recorded in the sidecar unless ``record`` is False."""
        path = self.image_path(ref)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return "missing", None
        except OSError as exc:
            raise ImageError("cannot read %s: %s" % (path, exc.strerror or exc))
        matches, data = self._sidecar_matches(ref, stat)
        if matches and not full:
            return "ok", "sidecar"
        report = (lambda done, total: progress("verifying", done, total)) if progress else None
        try:
            digest = file_sha256(path, progress=report)
        except OSError as exc:
            raise ImageError("cannot read %s: %s" % (path, exc.strerror or exc))
        if digest != ref.sha256:
            return "corrupt", "hash"
        if record:
            self._write_sidecar(ref, os.stat(path), used_at=(data or {}).get("used_at"))
        return "ok", "hash"

    def touch(self, ref):
        """Record that the image was used now (what ``image_prune`` ages cached images by)."""
        data = self._read_sidecar(ref)
        try:
            stat = os.stat(self.image_path(ref))
        except OSError:
            return
        if data and data.get("sha256") == ref.sha256:
            self._write_sidecar(ref, stat, verified_at=data.get("verified_at"))

    def remove(self, ref, lock_file=False):
        """Remove everything cached of ``ref`` (hold its lock); the lock file too if asked."""
        for path in (self.manifest_path(ref), self.image_path(ref), self.sidecar_path(ref), self.partial_path(ref)):
            remove_quietly(path)
        if lock_file:
            remove_quietly(self.lock_path(ref))

    # -- fetching --
    def fetch(self, store, ref, verify="sidecar", lock_timeout=3600.0, retries=3, progress=None, check_mode=False,
              sleep=time.sleep):
        """Make ``ref`` present and verified in the cache; return a dict describing what happened.

        Keys: ``path``, ``manifest_path``, ``manifest``, ``size``, ``changed``, ``downloaded_bytes``
        (bytes read from the store), ``resumed_from`` (bytes of an earlier partial download kept),
        ``verified`` (``sidecar``: unchanged since its last full hash, ``hash``: hashed now,
        ``download``: hashed as it arrived), ``replaced_corrupt``, ``lock_wait`` (seconds).
        In check mode nothing is locked, downloaded or written.
        """
        if verify not in VERIFY_MODES:
            raise ValueError("verify must be one of %s" % ", ".join(VERIFY_MODES))
        result = {"path": self.image_path(ref), "manifest_path": self.manifest_path(ref), "manifest": None,
                  "size": None, "changed": False, "downloaded_bytes": 0, "resumed_from": 0, "verified": None,
                  "replaced_corrupt": False, "lock_wait": 0.0}
        full = verify == "full"
        if check_mode:
            state, how = self.check(ref, full=full, progress=progress, record=False)
            manifest = self._cached_manifest(ref) if state == "ok" else None
            if manifest is None:
                manifest = store.get_manifest(ref)
                if manifest is None:
                    raise ImageNotFound("%s is not published in %s (no manifest)" % (ref, store.describe()))
                result["changed"] = True
            result.update(manifest=manifest, size=manifest["size"], verified=how if state == "ok" else None,
                          replaced_corrupt=state == "corrupt")
            return result

        self.prepare()
        with self.lock(ref, timeout=lock_timeout, sleep=sleep) as waited:
            result["lock_wait"] = round(waited, 3)
            state, how = self.check(ref, full=full, progress=progress)
            if state == "ok":
                manifest = self._cached_manifest(ref)
                if manifest is None:
                    manifest = self._store_manifest(store, ref)
                    result["changed"] = True
                self.touch(ref)
                result.update(manifest=manifest, size=manifest["size"], verified=how)
                return result
            if state == "corrupt":
                self.remove(ref)
                result["replaced_corrupt"] = True
            manifest = self._store_manifest(store, ref, write=False)
            size = manifest["size"]
            downloaded, resumed_from = self._download(store, ref, size, retries, progress, sleep)
            path = self.image_path(ref)
            rename_into_place(self.partial_path(ref), path)
            self._write_sidecar(ref, os.stat(path))
            write_atomic(self.manifest_path(ref), manifest_bytes(manifest), mode=0o444)
            result.update(manifest=manifest, size=size, changed=True, downloaded_bytes=downloaded,
                          resumed_from=resumed_from, verified="download")
            return result

    def _cached_manifest(self, ref):
        try:
            with open(self.manifest_path(ref), "rb") as handle:
                return parse_manifest(handle.read(), ref, source=self.manifest_path(ref))
        except (OSError, ImageError):
            return None

    def _store_manifest(self, store, ref, write=True):
        manifest = store.get_manifest(ref)
        if manifest is None:
            raise ImageNotFound("%s is not published in %s (no manifest)" % (ref, store.describe()))
        if write:
            write_atomic(self.manifest_path(ref), manifest_bytes(manifest), mode=0o444)
        return manifest

    def _download(self, store, ref, size, retries, progress, sleep):
        """Download into the ``.part`` file (resuming it); return (bytes read, resumed from).

        The bytes are hashed as they are written (the part kept from before is hashed first);
        the file is fsynced and made read-only. A failed or short transfer is resumed up to
        ``retries`` times. Raises IntegrityError when the bytes do not hash to ``ref.sha256``.
        """
        partial = self.partial_path(ref)
        try:
            resumed_from = os.stat(partial).st_size
        except FileNotFoundError:
            resumed_from = 0
        if resumed_from > size:
            resumed_from = 0
        downloaded = 0
        failures = 0
        restarted = False
        while True:
            try:
                handle = os.fdopen(os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), "r+b")
            except OSError as exc:
                raise ImageError("cannot write %s: %s" % (partial, exc.strerror or exc))
            error = None
            with handle:
                try:
                    digest, length, count = self._transfer(store, ref, size, handle, progress)
                    downloaded += count
                    if length < size:
                        raise ImageStoreError("the store sent %d of the %d bytes" % (length, size))
                    os.fsync(handle.fileno())
                except (ImageNotFound, IntegrityError):
                    raise
                except _Transfer as exc:  # bytes arrived before the failure: count them
                    downloaded += exc.count
                    error = exc.error
                except ImageStoreError as exc:
                    error = exc
                except ImageError:
                    raise
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                        raise ImageError("cannot write %s: %s" % (partial, exc.strerror or exc))
                    error = exc
            if error is not None:
                failures += 1
                if failures > retries:
                    raise ImageStoreError("download of %s from %s failed %d times, last: %s (the partial file %s "
                                          "is kept and resumed next time)"
                                          % (ref.image_file, store.describe(), failures, _describe(error), partial))
                if progress is not None:
                    progress("resuming after %s" % _describe(error), 0, size)
                sleep(min(2.0 ** failures, 30.0))
                continue
            if length == size and digest == ref.sha256:
                os.chmod(partial, 0o444)
                return downloaded, resumed_from
            remove_quietly(partial)
            if resumed_from and not restarted:
                # the part kept from before may be what is wrong: once more, from the first byte
                restarted = True
                resumed_from = 0
                if progress is not None:
                    progress("restarting (a resumed download did not verify)", 0, size)
                continue
            raise IntegrityError("the %d bytes downloaded of %s from %s hash to %s, not to the SHA-256 in its name: "
                                 "the stored image is corrupt; nothing was kept"
                                 % (length, ref.image_file, store.describe(), digest))

    @staticmethod
    def _transfer(store, ref, size, handle, progress):
        """Append what the store has beyond the part in ``handle``; return (hex SHA-256 of the
        whole part, its length, bytes read). Network failures raise :class:`_Transfer`."""
        offset = os.fstat(handle.fileno()).st_size
        if offset > size:
            offset = 0
        count = 0
        reader = None
        if offset < size:
            try:
                reader = store.read(ref.image_file, offset)
            except ImageStoreError:
                raise
            except Exception as exc:
                raise _Transfer(exc, 0)
            offset = reader.offset  # 0 when the server ignored the range
        with contextlib.ExitStack() as stack:
            if reader is not None:
                stack.enter_context(reader)
                if reader.total != size:
                    raise IntegrityError("the store has %d bytes of %s, its manifest says %d"
                                         % (reader.total, ref.image_file, size))
            digest = hashlib.sha256()
            handle.seek(0)
            remaining = offset
            while remaining > 0:  # the part kept from before
                data = handle.read(min(CHUNK, remaining))
                if not data:
                    raise ImageError("the partial download %s shrank while it was read" % handle.name)
                digest.update(data)
                remaining -= len(data)
            handle.seek(offset)
            handle.truncate(offset)
            done = offset
            if reader is not None:
                chunks = reader.chunks()
                while True:
                    try:
                        chunk = next(chunks, None)
                    except Exception as exc:
                        handle.flush()
                        raise _Transfer(exc, count)
                    if chunk is None:
                        break
                    handle.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    count += len(chunk)
                    if progress is not None:
                        progress("downloading", done, size)
            handle.flush()
        return digest.hexdigest(), done, count

    # -- listing (for prune) --
    def entries(self):
        """``{ImageRef: {"files": [paths], "size": bytes, "last_used": epoch}}`` of the cache;
        ``last_used`` is the sidecar's ``used_at`` (the last fetch), else the files' mtime."""
        found = {}
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return found
        for file_name in names:
            try:
                ref = parse_image_file_name(file_name)
            except ImageNameError:
                continue
            path = os.path.join(self.root, file_name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            entry = found.setdefault(ref, {"files": [], "size": 0, "last_used": 0.0})
            entry["files"].append(path)
            entry["size"] += stat.st_size
            entry["last_used"] = max(entry["last_used"], stat.st_mtime)
        for ref, entry in found.items():
            used_at = (self._read_sidecar(ref) or {}).get("used_at")
            if isinstance(used_at, (int, float)) and not isinstance(used_at, bool):
                entry["last_used"] = used_at  # the last fetch; else the files' mtime
        return found

    def partials(self):
        """``{ImageRef: (path, size, mtime)}`` of the partial downloads."""
        found = {}
        folder = os.path.join(self.root, STATE)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return found
        for file_name in names:
            if not file_name.endswith(".part"):
                continue
            try:
                ref = parse_image_file_name(file_name[:-len(".part")])
                stat = os.stat(os.path.join(folder, file_name))
            except (ImageNameError, OSError):
                continue
            found[ref] = (os.path.join(folder, file_name), stat.st_size, stat.st_mtime)
        return found


def _describe(error):
    text = str(error) or type(error).__name__
    return text if type(error).__name__ in text else "%s: %s" % (type(error).__name__, text)
