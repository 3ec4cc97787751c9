# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The file operations every part of testfleet shares; each has one home here.

- :func:`write_atomic`: a file replaced atomically (readers see the old content or the new,
  never a part), with its mode set before the rename and, by default, flushed to disk;
  :func:`atomic_file` is the same for content written as a stream (a copy, a download), and
  :func:`rename_into_place` the last step alone, for a ``.part`` file kept across attempts;
- :func:`read_file`: a file's bytes, with an error that says which file it is and why it
  cannot be read; :func:`read_secret`: the content of a secret file (a password, token or
  key), whose errors name the file and never quote what is in it;
- :func:`load_yaml`: YAML parsed safely and strictly (a key given twice is an error, not the
  last one silently kept), with errors that name the source, line and column;
  :func:`load_yaml_file` reads the file first; :func:`type_name` words what a value read from
  YAML is, for the errors of the checks that follow;
- :func:`remove_quietly`, :func:`fsync_dir`: the small operations that go with them.

Errors are :class:`FileProblem` (a ``ValueError``) worded for the operator; callers that have a
domain error of their own (``ConfigError``, ``ForgeError``...) catch it and re-raise theirs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    yaml = None
    HAS_YAML = False


class FileProblem(ValueError):
    """A file that cannot be used, worded for the operator (the path, never a secret's content)."""


def write_atomic(path, data, mode=0o600, fsync=True, prefix=".tmp-"):
    """Replace ``path`` with ``data`` (bytes, or str written as UTF-8) in one rename.

    The new content goes to a temporary file beside ``path`` that gets ``mode`` and, with
    ``fsync``, is flushed (with its directory) so that the rename survives a crash. Raise
    OSError when it cannot be written; the temporary file is then removed.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_file(path, mode=mode, fsync=fsync, prefix=prefix) as stream:
        stream.write(data)


@contextlib.contextmanager
def atomic_file(path, mode=0o600, fsync=True, prefix=".tmp-", folder=None):
    """A binary stream on a temporary file that replaces ``path`` when the block ends.

    The temporary file is made in ``folder`` (default: beside ``path``; it must be on the same
    file system) and named ``prefix`` plus random letters. When the block raises, the file is
    removed and ``path`` is left alone; otherwise it is flushed (with ``fsync``), given ``mode``
    and renamed to ``path`` as :func:`rename_into_place` does. Raise OSError as ``open`` does.
    """
    handle, temporary = tempfile.mkstemp(dir=folder or os.path.dirname(path) or ".", prefix=prefix)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        rename_into_place(temporary, path, mode=mode, fsync=fsync)
    except BaseException:
        remove_quietly(temporary)
        raise


def rename_into_place(temporary, path, mode=None, fsync=True):
    """Give the finished file ``temporary`` the name ``path`` in one rename.

    For a file written (and flushed) by its caller, such as a download's ``.part`` file that
    survives a failed attempt: it gets ``mode`` first (None: as it is), then the rename, then,
    with ``fsync``, the flush of ``path``'s directory. Raise OSError.
    """
    if mode is not None:
        os.chmod(temporary, mode)
    os.replace(temporary, path)
    if fsync:
        fsync_dir(os.path.dirname(path) or ".")


def read_file(path, what="file"):
    """The bytes of the file ``path``.

    ``what`` names the file in errors ("config file", "manifest"). Raise :class:`FileProblem`
    worded ``cannot read the WHAT PATH: reason`` when it cannot be read.
    """
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise FileProblem("cannot read the %s %s: %s"
                          % (what, path, exc.strerror or exc.__class__.__name__)) from None


def read_secret(path, what="secret"):
    """The text of the secret file ``path`` without surrounding white space.

    ``what`` names the secret in errors ("GitHub token", "broker password"). Raise
    :class:`FileProblem` when the file cannot be read, is not UTF-8 or is empty; the message
    names the path and never the content.
    """
    raw = read_file(path, "%s file" % what)
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise FileProblem("the %s file %s is not UTF-8 text" % (what, path)) from None
    if not value:
        raise FileProblem("the %s file %s is empty" % (what, path))
    return value


if HAS_YAML:
    class _DuplicateKey(yaml.YAMLError):
        """A key given twice in one mapping (PyYAML would keep the last one)."""

        def __init__(self, key, mark):
            super().__init__("the key %r is given twice" % (key,))
            self.key = key
            self.mark = mark

    class _StrictLoader(yaml.SafeLoader):
        """PyYAML's safe loader that refuses duplicate keys instead of keeping the last one."""

    def _construct_mapping(loader, node, deep=False):
        seen = set()
        for key_node, dummy in node.value:
            key = loader.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: PyYAML reports it itself
            if duplicate:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep=deep)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text, source):
    """The data of the YAML document ``text`` (str or bytes), parsed safely and strictly.

    ``source`` names the text in errors (a path, or "the test map of owner/name"). Raise
    :class:`FileProblem` worded ``SOURCE: line L column C is not valid YAML: problem`` on invalid
    YAML and ``SOURCE: line L: the key 'k' is given twice`` on a key given twice in one mapping.
    """
    if not HAS_YAML:  # pragma: no cover - PyYAML comes with ansible-core
        raise FileProblem("reading %s needs PyYAML (pip install pyyaml)" % source)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # nosec - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise FileProblem("%s: line %d: %s" % (source, exc.mark.line + 1, exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = ": line %d column %d" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise FileProblem("%s%s is not valid YAML: %s" % (source, where, problem)) from None


def load_yaml_file(path, what="file"):
    """The data of the YAML file ``path``, as :func:`load_yaml` parses it.

    ``what`` names the file in errors ("config file", "test map"). Raise :class:`FileProblem`
    as :func:`read_file` does when it cannot be read, else as load_yaml does.
    """
    return load_yaml(read_file(path, what), path)


def type_name(value):
    """What ``value`` (as YAML or JSON gives it) is, in words for an error message: "a
    string", "a mapping", "nothing (null)"... (never the value, which may be a secret)."""
    if value is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


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
