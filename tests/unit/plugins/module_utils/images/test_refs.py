"""The references file of a tested repository: reading it and changing one entry."""

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils.images.refs import RefsFileError, parse_refs, set_ref
from ansible_collections.testfleet.infra.plugins.module_utils.images.naming import ImageRef

OLD = "a" * 64
NEW = "b" * 64
FEDORA = "c" * 64
TEXT = ("# the images of the tests\n"
        "debian-12: debian-12-%s   # bookworm\n"
        "\n"
        "fedora-41: 'fedora-41-%s'\n" % (OLD, FEDORA))


def test_parse_reads_every_entry():
    assert parse_refs(TEXT) == {"debian-12": ImageRef("debian-12", OLD), "fedora-41": ImageRef("fedora-41", FEDORA)}
    assert parse_refs("") == {} and parse_refs(None) == {} and parse_refs("# nothing yet\n") == {}


@pytest.mark.parametrize("text, problem", [
    ("- debian-12\n", "must be a mapping of image names"),
    ("debian-12: [\n", "is not valid YAML"),
    ("Debian: debian-12-%s\n" % OLD, "'Debian' is not an image name"),
    ("debian-12: fedora-41-%s\n" % OLD, "debian-12 must be debian-12-<sha256>"),
    ("debian-12: %s\n" % OLD, "debian-12 must be debian-12-<sha256>"),
    ("debian-12: 12\n", "debian-12 must be debian-12-<sha256>"),
])
def test_parse_refuses_what_is_not_a_references_file(text, problem):
    with pytest.raises(RefsFileError, match=problem):
        parse_refs(text, "images.yml")


def test_set_ref_changes_only_the_value_of_that_entry():
    changed = set_ref(TEXT, ImageRef("debian-12", NEW))
    assert changed == TEXT.replace("debian-12-" + OLD, "debian-12-" + NEW)
    assert parse_refs(changed)["debian-12"] == ImageRef("debian-12", NEW)
    quoted = set_ref(TEXT, ImageRef("fedora-41", NEW))
    assert quoted == TEXT.replace("'fedora-41-%s'" % FEDORA, "'fedora-41-%s'" % NEW)


def test_set_ref_appends_a_new_entry_and_makes_a_new_file():
    appended = set_ref(TEXT.rstrip("\n"), ImageRef("centos-9", NEW))
    assert appended == TEXT + "centos-9: centos-9-%s\n" % NEW
    assert set_ref("", ImageRef("debian-12", NEW)) == "debian-12: debian-12-%s\n" % NEW
    assert set_ref(None, ImageRef("debian-12", NEW)) == "debian-12: debian-12-%s\n" % NEW


def test_set_ref_refuses_a_file_it_cannot_edit_line_by_line():
    with pytest.raises(RefsFileError, match="not a plain 'debian-12: <reference>' line"):
        set_ref("{debian-12: debian-12-%s}\n" % OLD, ImageRef("debian-12", NEW))
    with pytest.raises(RefsFileError, match="not a plain"):
        set_ref("debian-12: >-\n  debian-12-%s\n" % OLD, ImageRef("debian-12", NEW))
    with pytest.raises(RefsFileError, match="is not valid YAML"):
        set_ref("debian-12: [", ImageRef("debian-12", NEW))
