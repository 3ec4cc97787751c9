#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: config_info
short_description: Read sections of testfleet's config file, checked and with their defaults
version_added: 0.2.0
description:
  - Reads testfleet's config file (the one C(testfleet-worker), C(testfleet-webhook) and the
    operator CLI read; its keys are listed in C(plugins/module_utils/config.py)) and returns
    the asked sections with every key, defaults filled in, after the same checks the programs
    make - so a job playbook uses the settings the worker was deployed with, and a mistake in
    the file fails here with the file and key named.
  - The file never holds a secret (only the names of files that do), so what is returned may be
    logged.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  path:
    description:
      - The config file on the managed host.
    type: path
    default: /etc/testfleet/config.yml
  sections:
    description:
      - The sections to return. Their required keys must be set.
    type: list
    elements: str
    required: true
    choices: [amqp, webhook, worker, log_store, forge, images]
attributes:
  check_mode:
    support: full
    details: Reads only; the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - testfleet developers (@testfleet)
"""

EXAMPLES = r"""
- name: Read the image settings of this worker
  testfleet.infra.config_info:
    path: "{{ testfleet_config }}"
    sections: [images]
  register: settings

- name: Use them
  ansible.builtin.debug:
    msg: "images go to {{ settings.config.images.store_url }}"
"""

RETURN = r"""
config:
  description: The asked sections, each a mapping of every key (defaults filled in).
  returned: success
  type: dict
  sample: {images: {store_url: "s3://ci-images/images", cache_dir: /var/cache/testfleet/images, keep_days: 30}}
path:
  description: The file read.
  returned: success
  type: str
  sample: /etc/testfleet/config.yml
testmap:
  description: The file's C(testmap) key (none when it has none).
  returned: success
  type: str
  sample: /etc/testfleet/testmap.yml
"""

import copy

from ansible_collections.testfleet.infra.plugins.module_utils import config as config_lib
from ansible_collections.testfleet.infra.plugins.module_utils.module import AnsibleTestfleetModule

SECTIONS = ["amqp", "webhook", "worker", "log_store", "forge", "images"]


def main():
    module = AnsibleTestfleetModule(
        argument_spec=dict(
            path=dict(type="path", default=config_lib.DEFAULT_PATH),
            sections=dict(type="list", elements="str", required=True, choices=SECTIONS),
        ),
        supports_check_mode=True,
    )
    with module.reporting():
        config = config_lib.load(module.params["path"])
        sections = dict((name, copy.deepcopy(config.section(name))) for name in module.params["sections"])
    module.exit_json(changed=False, config=sections, path=config.path, testmap=config.testmap)


if __name__ == "__main__":
    main()
