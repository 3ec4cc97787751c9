# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The image references file of a tested repository: which image each of its tests boots.

The file (``.testfleet/images.yml`` by default) is a YAML mapping of image names to image
references, committed in the tested repository, so a new image reaches its tests only through
a reviewed change of this file::

    # VM images of the tests (written by testfleet's image refresh job; comments are kept)
    debian-12: debian-12-0f2c4e6b9a8d7c1e3f5a7b9c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e
    fedora-41: fedora-41-9a1b...

:func:`parse_refs` reads it (every value must be ``<name>-<sha256>`` of the key's name);
:func:`set_ref` changes one entry's value in the text, keeping every other line as it was, so
the pull request that bumps an image shows a one-line diff.
"""

from __future__ import annotations

import re

from ansible_collections.testfleet.infra.plugins.module_utils import files
from ansible_collections.testfleet.infra.plugins.module_utils.images import naming as image_naming

DEFAULT_REFS_FILE = ".testfleet/images.yml"
# A top-level entry written in block style: key, colon, value, optional comment.
_ENTRY_RE = (r"""^(?P<key>(?P<q>["']?){name}(?P=q))[ \t]*:[ \t]*"""
             r"""(?P<vq>["']?)(?P<value>[a-z0-9][a-z0-9._-]*)(?P=vq)[ \t]*(?:#.*)?$""")


class RefsFileError(ValueError):
    """The references file is not a mapping of image names to ``<name>-<sha256>`` references."""


def parse_refs(text, source=DEFAULT_REFS_FILE):
    """``{name: ImageRef}`` of the file's text (``""`` or None: an empty mapping).

    Parsed strictly: an image named twice is an error, not the last reference kept."""
    try:
        data = files.load_yaml(text or "", source)
    except files.FileProblem as exc:
        raise RefsFileError(str(exc)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RefsFileError("%s must be a mapping of image names to references (name: name-sha256), not a %s"
                            % (source, type(data).__name__))
    refs = {}
    for key, value in data.items():
        try:
            name = image_naming.check_name(key) if isinstance(key, str) else None
        except image_naming.ImageNameError:
            name = None
        if name is None:
            raise RefsFileError("%s: %r is not an image name" % (source, key))
        try:
            ref = image_naming.parse_image_ref(value) if isinstance(value, str) else None
        except image_naming.ImageNameError:
            ref = None
        if ref is None or ref.name != name:
            raise RefsFileError("%s: %s must be %s-<sha256>, not %r" % (source, name, name, value))
        refs[name] = ref
    return refs


def set_ref(text, ref, source=DEFAULT_REFS_FILE):
    """The file's text with the entry of ``ref.name`` set to ``ref`` (appended when absent).

    Only that entry's value changes; comments, order and the other lines stay. A file whose
    entry is not a plain ``name: value`` line (flow style, multi-line value) is refused with
    :class:`RefsFileError`, as is a result that would not read back as intended.
    """
    before = parse_refs(text, source)
    wanted = "%s-%s" % (ref.name, ref.sha256)
    text = text or ""
    pattern = re.compile(_ENTRY_RE.format(name=re.escape(ref.name)), re.MULTILINE)
    matches = list(pattern.finditer(text))
    if len(matches) > 1:
        raise RefsFileError("%s names %s more than once" % (source, ref.name))
    if matches:
        match = matches[0]
        result = text[:match.start("value")] + wanted + text[match.end("value"):]
    elif ref.name in before:
        raise RefsFileError("%s: the entry of %s is not a plain '%s: <reference>' line; cannot change it"
                            % (source, ref.name, ref.name))
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        result = "%s%s: %s\n" % (text, ref.name, wanted)
    after = parse_refs(result, source)
    expected = dict(before, **{ref.name: image_naming.parse_image_ref(wanted)})
    if after != expected:
        raise RefsFileError("%s: changing the entry of %s would change other entries; edit it by hand"
                            % (source, ref.name))
    return result
