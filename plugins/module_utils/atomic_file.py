# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files replaced atomically (readers see the old content or the new, never a part), and the
small file operations that go with it."""

from __future__ import annotations

import os
import tempfile


def replace_file(path, data, prefix=".tmp-"):
    """Write ``data`` (bytes) to a new file (mode 0600) beside ``path``, then rename it over ``path``.

    Raise OSError when it cannot be written; the temporary file is then removed.
    """
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=prefix)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def remove_quietly(path):
    """Remove the file ``path`` if it is there; errors are ignored."""
    try:
        os.unlink(path)
    except OSError:
        pass


def fsync_dir(path):
    """Flush the directory ``path`` (a rename in it survives a crash); errors are ignored."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
