"""Restart the local RabbitMQ broker, for tests that check what survives a restart.

Anything else using the broker at the time loses its connections: mark such tests
``broker_restart`` (deselect with ``-m "not broker_restart"`` when others share the broker).
"""

import os
import subprocess
import time


def restart(timeout=180):
    """Restart rabbitmq-server (through systemd when it runs) and wait until it accepts AMQP."""
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
            return
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not start: %s" % done.stderr.decode(errors="replace"))
        time.sleep(1)
