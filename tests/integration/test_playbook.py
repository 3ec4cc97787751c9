"""The modules run by ansible-playbook for real: local connection, this Python as interpreter."""

import json
import os
import subprocess
import sys

PLAYBOOK = """
- name: Topology, publish and read back
  hosts: localhost
  gather_facts: false
  module_defaults:
    testfleet.infra.amqp_topology: &connection
      url: "{{ amqp.url }}"
      password_file: "{{ amqp.password_file | default(omit) }}"
      ca_file: "{{ amqp.ca_file | default(omit) }}"
      cert_file: "{{ amqp.cert_file | default(omit) }}"
      key_file: "{{ amqp.key_file | default(omit) }}"
    testfleet.infra.amqp_publish: *connection
    testfleet.infra.amqp_get: *connection
  tasks:
    - name: Apply the topology in check mode
      testfleet.infra.amqp_topology:
        topology: "{{ topology }}"
      check_mode: true
      register: checked

    - name: Apply the topology
      testfleet.infra.amqp_topology:
        topology: "{{ topology }}"
      register: applied

    - name: Apply it again
      testfleet.infra.amqp_topology:
        topology: "{{ topology }}"
      register: again

    - name: Publish a job
      testfleet.infra.amqp_publish:
        exchange: "{{ topology.exchange }}"
        queue: "{{ topology.queues[0] }}"
        job:
          version: 1
          id: playbook-1
          kind: scan
          repo: owner/project
      register: published

    - name: Read it back
      testfleet.infra.amqp_get:
        queue: "{{ topology.queues[0] }}"
        message_id: "{{ published.message_id }}"
        wait: 10
      register: taken

    - name: Check what happened
      ansible.builtin.assert:
        that:
          - checked is changed
          - applied is changed
          - applied.created.queues | length == 3
          - again is not changed
          - published is changed
          - taken is changed
          - taken.body.repo == 'owner/project'
          - taken.delivery_count == 0
"""


def test_a_real_playbook(tmp_path, collections_path, amqp_options, topology):
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(PLAYBOOK)
    extra_vars = tmp_path / "vars.json"
    extra_vars.write_text(json.dumps({"amqp": amqp_options, "topology": topology,
                                      "ansible_python_interpreter": sys.executable}))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "local"), ANSIBLE_REMOTE_TEMP=str(tmp_path / "remote"))
    process = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
         "-c", "local", "-e", "@%s" % extra_vars, str(playbook)],
        cwd=str(tmp_path), env=env, check=False, capture_output=True, text=True, timeout=240)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "ok=6" in process.stdout and "failed=0" in process.stdout
