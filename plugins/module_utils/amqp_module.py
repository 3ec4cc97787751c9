# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The base of every AMQP module: common connection options, connecting, error reporting.

A module builds ``AmqpModule(argument_spec={...its own options...}, ...)``: the connection
options documented in the ``testfleet.infra.amqp`` doc fragment are added, a password in the
``url`` is hidden from everything the module returns, and :meth:`AmqpModule.connect` turns
connection problems into ``fail_json`` with a message saying what to fix.
"""

from __future__ import annotations

import traceback
from urllib.parse import unquote, urlsplit

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.testfleet.infra.plugins.module_utils import amqp

AMQP_ARGUMENT_SPEC = dict(
    url=dict(type="str", default=amqp.DEFAULT_URL),
    ca_file=dict(type="path"),
    cert_file=dict(type="path"),
    key_file=dict(type="path"),
    password_file=dict(type="path", no_log=False),
    heartbeat=dict(type="int", default=amqp.DEFAULT_HEARTBEAT),
    connect_timeout=dict(type="float", default=10.0),
)


class AmqpModule(AnsibleModule):
    """AnsibleModule with testfleet's AMQP connection options and error handling."""

    def __init__(self, argument_spec, **kwargs):
        spec = dict(AMQP_ARGUMENT_SPEC)
        spec.update(argument_spec)
        super().__init__(argument_spec=spec, **kwargs)
        self._hide_url_password()

    def _hide_url_password(self):
        """Mask the URL's password (raw and percent-decoded) in every result and message."""
        try:
            password = urlsplit(self.params["url"]).password
        except ValueError:
            return
        if password:
            self.no_log_values.update((password, unquote(password)))

    def amqp_settings(self):
        return amqp.AmqpSettings.from_mapping(
            self.params, connection_name="ansible %s" % self._name)

    def fail_amqp(self, error, **result):
        """Fail the module with an AmqpError's message (never carrying a secret)."""
        self.fail_json(msg=str(error), error=error.__class__.__name__, **result)

    def connect(self):
        """Return a ``pika.BlockingConnection`` or fail the module saying what to fix."""
        if not amqp.HAS_PIKA:
            self.fail_json(msg=missing_required_lib("pika"),
                           exception="".join(traceback.format_exception(
                               None, amqp.PIKA_IMPORT_ERROR, amqp.PIKA_IMPORT_ERROR.__traceback__)))
        try:
            return amqp.connect(self.amqp_settings())
        except amqp.AmqpError as exc:
            self.fail_amqp(exc)
