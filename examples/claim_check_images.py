"""Claim check: an image-processing job queue where 20 MiB images travel through a payload store, not the broker.

Uploads land as files; the web tier sends one job per image to the "images"
queue with ``ClaimCheck.send(bus, "images", Path(upload))``: the file is
streamed to the local payload store (hashed on the way) and the message
carries only the claim. Thumbnail requests are a few dozen bytes of JSON and
go inline, untouched. A worker thread (its own Bus) streams each image out of
the store, verifying its SHA-256, acks the job and the payload is deleted.
One stored image is corrupted behind the store's back (a bad disk, say): its
job is dead-lettered with the reason. A producer that "crashed" between
storing a payload and sending its job left an orphan: the TTL sweep removes
it, and the dead letter's payload kept for inspection.

    python examples/claim_check_images.py

Everything runs here: an embedded broker in a thread with a temporary data
directory and a temporary store directory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import ringbus
from ringbus.message import Message
from ringbus.patterns.claim_check import CLAIM_ERROR, CLAIM_KEY, ClaimCheck, LocalStore

MiB = 1 << 20
IMAGES = 6
IMAGE_SIZE = 20 * MiB
THUMBNAILS = 20


def usage(claims: ClaimCheck) -> str:
    held = claims.store.usage()
    return f"{held.objects} payloads, {held.bytes:,} bytes ({held.bytes / MiB:.1f} MiB)"


def make_upload(directory: Path, number: int) -> Path:
    """A fake 20 MiB image: a small header and noise, written in 1 MiB pieces."""
    path = directory / f"photo-{number:03d}.raw"
    with open(path, "wb") as file:
        file.write(b"RAWIMG" + number.to_bytes(2, "big"))
        for _ in range(IMAGE_SIZE // MiB - 1):
            file.write(os.urandom(MiB))
        file.write(os.urandom(IMAGE_SIZE - file.tell()))
    return path


@dataclass
class Report:
    handled: int = 0
    brightness: list[float] = field(default_factory=list)
    thumbnails: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)


def worker(url: str, claims: ClaimCheck, jobs: int, report: Report) -> None:
    """Process the "images" queue: stream each image (thumbnail requests come inline) and ack it."""

    def process(message: Message, payload: BinaryIO) -> None:
        if message.headers.get("job") == "thumbnail":
            request = json.loads(payload.read())
            report.thumbnails.append(request["image"])
            return
        total = count = 0
        while chunk := payload.read(MiB):  # the image is never in memory whole
            sample = chunk[::4096]  # a sample of pixels
            total += sum(sample)
            count += len(sample)
        report.brightness.append(total / count)

    with ringbus.connect(url) as bus:  # a Bus belongs to one thread: the worker opens its own
        report.handled = claims.consume(bus, "images", process, max_messages=jobs, timeout=10.0, prefetch=4)
        dead = bus.receive("images.dlq", timeout=1.0)
        if dead is not None:
            report.dead.append(str(dead.headers[CLAIM_ERROR]))
            dead.ack()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="ringbus-claims-") as tmp:
        root = Path(tmp)
        uploads = root / "uploads"
        uploads.mkdir()
        with ringbus.Broker(root / "broker", "tcp://127.0.0.1:0") as broker, ringbus.connect(broker.endpoint) as bus:
            bus.declare_queue("images")
            store = LocalStore(root / "claims")  # the default kind of store: ClaimCheck(path) or ClaimCheck() make one
            claims = ClaimCheck(store, threshold=256 * 1024)

            started = time.perf_counter()
            for number in range(IMAGES):
                path = make_upload(uploads, number)
                claims.send(bus, "images", path, key=f"photo-{number:03d}", headers={"job": "resize"})
                path.unlink()  # the upload is in the store now
            inline_bytes = 0
            for number in range(THUMBNAILS):
                request = json.dumps({"image": f"photo-{number % IMAGES:03d}", "size": [128, 128]}).encode()
                inline_bytes += len(request)
                claims.send(bus, "images", request, headers={"job": "thumbnail"}, content_type="application/json")
            sent = claims.stats()
            print(f"sent {sent.claimed} images of {IMAGE_SIZE / MiB:.1f} MiB through the claim check "
                  f"({sent.bytes_stored / MiB:.1f} MiB stored) and {sent.inline} thumbnail requests inline, "
                  f"in {time.perf_counter() - started:.1f} s")
            stats = bus.queue_stats("images")
            print(f"queue 'images': {stats.depth} messages waiting with {inline_bytes:,} bytes of bodies in all "
                  "(an image job's body is empty: its claim is 4 headers)")

            # A producer that stored a payload and died before sending its job: an orphan for the sweep.
            claims.check_in(os.urandom(IMAGE_SIZE // 4))
            # A bad disk flips a byte of one stored image.
            first = bus.receive("images", timeout=5.0)
            assert first is not None
            first_key = str(first.headers[CLAIM_KEY])
            first.nack(requeue=True)
            path = store.directory / first_key
            with open(path, "r+b") as file:
                file.seek(IMAGE_SIZE // 2)
                byte = file.read(1)
                file.seek(IMAGE_SIZE // 2)
                file.write(bytes([byte[0] ^ 0xFF]))
            print(f"store before processing: {usage(claims)} (one is an orphan, one was corrupted)")

            report = Report()
            thread = threading.Thread(target=worker, args=(broker.endpoint, claims, IMAGES + THUMBNAILS, report))
            thread.start()
            thread.join(60.0)
            done = claims.stats()
            brightness = report.brightness
            print(f"worker: {report.handled} jobs handled: {len(brightness)} images processed (mean brightness "
                  f"{sum(brightness) / max(1, len(brightness)):.1f}), {len(report.thumbnails)} thumbnail requests, "
                  f"{done.fetched} payloads verified ({done.bytes_fetched / MiB:.1f} MiB), "
                  f"{done.released} deleted after their ack")
            print(f"dead-lettered: {done.dead_lettered} ({', '.join(report.dead)})")
            print(f"store after acks: {usage(claims)} (the dead letter's payload, kept for inspection, and the orphan)")
            swept = claims.sweep(older_than=3600, now=time.time() + 2 * 3600)  # as a cron job would, two hours on
            print(f"TTL sweep (older than 1 h, run 2 h later): removed {swept}")
            held = claims.store.usage()
            print(f"store after GC: {held.objects} payloads, {held.bytes} bytes")


if __name__ == "__main__":
    main()
