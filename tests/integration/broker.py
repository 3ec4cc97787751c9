"""Restart the local RabbitMQ broker, for tests that check what survives a restart.

Anything else using the broker at the time loses its connections: mark such tests
``broker_restart`` (deselect with ``-m "not broker_restart"`` when others share the broker).
"""

import os
import subprocess
import time
import uuid


def restart(timeout=180, settings=None):
    """Restart rabbitmq-server (through systemd when it runs) and wait until it accepts AMQP.

    With ``settings`` (an AmqpSettings), also wait until a quorum queue can be declared: right
    after a restart the broker recovers its quorum queues, and a declaration can fail with
    INTERNAL_ERROR meanwhile.
    """
    if os.path.isdir("/run/systemd/system"):
        commands = [["systemctl", "restart", "rabbitmq-server"]]
    else:
        # `rabbitmqctl shutdown` waits for the server to exit (`stop` does not).
        commands = [["rabbitmqctl", "shutdown"], ["rabbitmq-server", "-detached"]]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    # Right after `rabbitmq-server -detached` the node may not be registered yet and
    # await_startup exits 69 at once: try again until the deadline.
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "120"],
                              capture_output=True, timeout=timeout, check=False)
        if done.returncode == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not start: %s" % done.stderr.decode(errors="replace"))
        time.sleep(1)
    if settings is not None:
        _wait_for_quorum_queues(settings, deadline)


def _wait_for_quorum_queues(settings, deadline):
    from ansible_collections.testfleet.infra.plugins.module_utils import amqp

    probe = "testfleet-restart-probe-%s" % uuid.uuid4().hex[:8]
    while True:
        try:
            connection = amqp.connect(settings)
            try:
                channel = connection.channel()
                channel.queue_declare(probe, durable=True, arguments={"x-queue-type": "quorum"})
                channel.queue_delete(probe)
                return
            finally:
                if connection.is_open:
                    connection.close()
        except Exception as exc:  # not ready yet
            if time.monotonic() > deadline:
                raise RuntimeError("RabbitMQ cannot declare a quorum queue after its restart: %s" % exc)
            time.sleep(1)
