"""asv: the message layer - codec encode/decode and a memory:// bus send + receive + ack."""

import uuid

import ringbus
from ringbus import codec
from ringbus.message import Message

N = 1_000


class Codec:
    """encode + decode of one Message, N times, per body size (inline below 256 B, a body frame above)."""

    params = [64, 4096]
    param_names = ["body_bytes"]

    def setup(self, size):
        self.message = Message(body=bytes(size), key="order-42", priority=5, headers={"tenant": "t1"})
        self.frames = codec.encode(self.message)

    def time_encode(self, size):
        encode, message = codec.encode, self.message
        for _ in range(N):
            encode(message)

    def time_decode(self, size):
        decode, frames = codec.decode, self.frames
        for _ in range(N):
            decode(frames)


class MemoryBus:
    """memory://: N sends, then N receive + ack, 64 B bodies, one thread."""

    def setup(self):
        self.bus = ringbus.connect(f"memory://asv-{uuid.uuid4().hex[:8]}")
        self.bus.declare_queue("bench")
        self.body = bytes(64)

    def teardown(self):
        self.bus.close()

    def time_send_receive_ack(self):
        bus, body = self.bus, self.body
        for _ in range(N):
            bus.send("bench", body)
        for _ in range(N):
            bus.receive("bench", timeout=1.0).ack()
