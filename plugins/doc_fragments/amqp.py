# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The AMQP connection options of every testfleet.infra AMQP module (the amqp family of
    # module_utils/module.py).
    DOCUMENTATION = r"""
options:
  url:
    description:
      - The broker, as C(amqp://[user[:password]@]host[:port]/[vhost]) or C(amqps://...) for TLS.
      - The port defaults to 5672 for C(amqp) and 5671 for C(amqps); the vhost defaults to C(/)
        (write C(%2F) for it explicitly).
      - Without a user, the connection authenticates as C(guest) (which RabbitMQ accepts only
        from localhost), or with the client certificate when O(cert_file) is set.
      - A password in the URL is replaced by C(********) in everything the module returns;
        prefer O(password_file), which keeps it out of the task and its logs.
    type: str
    default: amqp://127.0.0.1:5672/
  ca_file:
    description:
      - CA bundle that signed the broker's certificate. Only with an C(amqps) O(url).
      - When not set, the system's CA certificates are used.
    type: path
  cert_file:
    description:
      - Client certificate (PEM) for mutual TLS. Requires O(key_file) and an C(amqps) O(url).
      - Unless the O(url) names a user, the connection then uses EXTERNAL authentication (the
        certificate's subject is the RabbitMQ user).
    type: path
  key_file:
    description:
      - Private key (PEM) of O(cert_file).
    type: path
  password_file:
    description:
      - File on the managed host holding the password of the user named in O(url).
      - Its content is read when connecting and never returned; do not also put a password in
        O(url).
    type: path
  heartbeat:
    description:
      - AMQP heartbeat interval, in seconds, proposed to the broker. C(0) disables heartbeats.
    type: int
    default: 60
  connect_timeout:
    description:
      - Seconds to wait for the TCP connection (and each socket operation while connecting).
    type: float
    default: 10.0
requirements:
  - pika >= 1.0 (Python library, on the managed host)
"""

    # The action group of the modules listed in meta/runtime.yml (testfleet.infra.amqp.action_group).
    ACTION_GROUP = r"""
attributes:
  action_group:
    description: Use C(group/testfleet.infra.amqp) in C(module_defaults) to give all AMQP modules the same connection options.
    support: full
    membership:
      - testfleet.infra.amqp
"""
