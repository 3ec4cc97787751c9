"""Restart the local RabbitMQ broker, for tests that check what survives a restart.

Anything else using the broker at the time loses its connections: mark such tests
``broker_restart`` (deselect with ``-m "not broker_restart"`` when others share the broker).
"""

import os
import subprocess
import time
import uuid


def restart(timeout=180, settings=None, attempts=3):
    """Restart rabbitmq-server (through systemd when it runs) and wait until it accepts AMQP.

    With ``settings`` (an AmqpSettings), also wait until a quorum queue with an at-least-once
    dead-letter strategy can be declared. Right after a restart the broker recovers its queues
    and a declaration can fail meanwhile; and RabbitMQ 3.10 (Debian 12) can lose its
    dead-letter worker supervisor for good when queues are deleted while it recovers them
    (``rabbit_fifo_dlx_sup`` reaches its restart intensity): every such declaration then fails
    with INTERNAL_ERROR until the next restart, so the broker is restarted again.
    """
    for dummy in range(attempts):
        deadline = time.monotonic() + timeout
        _restart_once(timeout, deadline)
        if settings is None:
            return
        # A queue deleted while the broker still starts its dead-letter worker kills that worker
        # in a loop and takes the supervisor down: let every queue come up and settle first.
        if (_quorum_queues_work(settings, time.monotonic() + 60) and _queues_running(deadline)
                and _settled() and _quorum_queues_work(settings, time.monotonic() + 10)):
            return
    raise RuntimeError("RabbitMQ cannot declare a quorum queue with a dead-letter exchange after %d restarts"
                       % attempts)


def _restart_once(timeout, deadline):
    if os.path.isdir("/run/systemd/system"):
        commands = [["systemctl", "restart", "rabbitmq-server"]]
    else:
        # `rabbitmqctl shutdown` waits for the server to exit (`stop` does not).
        commands = [["rabbitmqctl", "shutdown"], ["rabbitmq-server", "-detached"]]
    for command in commands:
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
    # Right after `rabbitmq-server -detached` the node may not be registered yet and
    # await_startup exits 69 at once: try again until the deadline.
    while True:
        done = subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "120"],
                              capture_output=True, timeout=timeout, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not start: %s" % done.stderr.decode(errors="replace"))
        time.sleep(1)


def _queues_running(deadline):
    """Wait until every queue of every vhost is running; False at the deadline."""
    while True:
        vhosts = subprocess.run(["rabbitmqctl", "list_vhosts", "-q", "--no-table-headers"], capture_output=True,
                                text=True, check=False).stdout.split()
        states = []
        for vhost in vhosts:
            listed = subprocess.run(["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "-p", vhost, "state"],
                                    capture_output=True, text=True, check=False)
            states += listed.stdout.split() if listed.returncode == 0 else ["unknown"]
        if all(state == "running" for state in states):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)


def _settled(seconds=3.0):
    time.sleep(seconds)
    return True


def _quorum_queues_work(settings, deadline):
    """Whether a quorum queue with an at-least-once dead-letter exchange can be declared."""
    from ansible_collections.testfleet.infra.plugins.module_utils import amqp

    probe = "testfleet-restart-probe-%s" % uuid.uuid4().hex[:8]
    arguments = {"x-queue-type": "quorum", "x-dead-letter-exchange": "amq.fanout",
                 "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    while True:
        try:
            connection = amqp.connect(settings)
            try:
                channel = connection.channel()
                channel.queue_declare(probe, durable=True, arguments=arguments)
                channel.queue_delete(probe)
                return True
            finally:
                if connection.is_open:
                    connection.close()
        except Exception:  # not ready yet, or broken until restarted
            if time.monotonic() > deadline:
                return False
            time.sleep(1)
