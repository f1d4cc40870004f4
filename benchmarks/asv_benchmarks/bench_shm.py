"""asv: ShmChannel - send + recv in one process, and a 64 B round trip to an echo process."""

import multiprocessing
import os
import uuid

import ringbus

N = 1_000
FORK = multiprocessing.get_context("fork")


def _name():
    return f"asv-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ShmSendRecv:
    """N sends then N recvs of one message size through one channel, in this process."""

    params = [64, 4096]
    param_names = ["message_bytes"]

    def setup(self, size):
        self.channel = ringbus.ShmChannel.create(_name(), 1 << 22)
        self.payload = bytes(size)

    def teardown(self, size):
        self.channel.close()
        self.channel.unlink()

    def time_send_recv(self, size):
        send, recv, payload = self.channel.send, self.channel.recv, self.payload
        for _ in range(N):
            send(payload)
        for _ in range(N):
            recv(5.0)


def _echo(there, back):
    rx, tx = ringbus.ShmChannel.attach(there), ringbus.ShmChannel.attach(back)
    while True:
        data = rx.recv(60.0)
        if not data:  # the empty message: stop
            break
        tx.send(data)
    rx.close()
    tx.close()


class ShmRoundTrip:
    """N round trips of 64 B to a forked echo process and back (two channels)."""

    timeout = 120

    def setup(self):
        there, back = _name(), _name()
        self.out = ringbus.ShmChannel.create(there, 1 << 16)
        self.inp = ringbus.ShmChannel.create(back, 1 << 16)
        self.echo = FORK.Process(target=_echo, args=(there, back), daemon=True)
        self.echo.start()
        self.payload = bytes(64)
        self.out.send(self.payload)  # warm-up: the echo process is attached once this comes back
        self.inp.recv(60.0)

    def teardown(self):
        self.out.send(b"")
        self.echo.join(10.0)
        if self.echo.is_alive():
            self.echo.kill()
        for channel in (self.out, self.inp):
            channel.close()
            channel.unlink()

    def time_round_trip(self):
        send, recv, payload = self.out.send, self.inp.recv, self.payload
        for _ in range(N):
            send(payload)
            recv(60.0)
