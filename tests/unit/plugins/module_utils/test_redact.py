"""The one mask for secrets, and everything that shows one."""

import logging

from ansible_collections.testfleet.infra.plugins.module_utils import amqp, redact, s3
from ansible_collections.testfleet.infra.plugins.module_utils.forge import wire
from ansible_collections.testfleet.infra.plugins.plugin_utils import logstore


def test_hide_replaces_longer_secrets_first_and_skips_empty_ones():
    assert redact.hide("key abc and abcdef", ["abc", "abcdef", "", None]) == "key ******** and ********"
    assert redact.hide("nothing", []) == "nothing"


def test_every_secret_is_shown_as_the_one_mask():
    mask = redact.MASK
    assert amqp.redact_url("amqp://u:pw@host/") == "amqp://u:%s@host/" % mask
    assert s3.describe_error(ValueError("key pw"), secrets=("pw",)) == "ValueError: key %s" % mask
    assert logstore.Redactor(["pw"]).text("a pw") == "a %s" % mask
    assert logstore.public_job({"args": {"secrets": {"k": "pw"}}})["args"]["secrets"] == {"k": mask}
    record = logging.LogRecord("github", logging.DEBUG, __file__, 1, 'body {"token": "%s"}', ("pw",), None)
    assert wire.SecretFieldFilter().filter(record)
    assert record.getMessage() == 'body {"token": "%s"}' % mask
