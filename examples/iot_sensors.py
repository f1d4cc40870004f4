"""Sensor readings over MQTT: devices publish, a climate service subscribes and aggregates.

- Each device (a thread here; a microcontroller with any MQTT client in real life) publishes its temperature and
  humidity on ``sensors.<site>.<device>.<quantity>`` at QoS 1, with the unit in a header (an MQTT 5 user property).
- The climate service is a durable group (an MQTT persistent session): it subscribes to
  ``sensors.*.*.temperature``, is down while the devices start publishing, and on its return gets every reading
  that was published while it was away, before the new ones. It acks each reading once it has counted it.
- A live display subscribes ephemerally to ``sensors.#``: it only sees what is published while it is attached.

Run: mosquitto -d; python examples/iot_sensors.py [--url mqtt://127.0.0.1:1883?prefix=demo/]
"""

from __future__ import annotations

import argparse
import threading
import uuid
from dataclasses import dataclass, field

import ringbus
from ringbus.bus import Bus, Subscription
from ringbus.message import Message
from ringbus.patterns.pubsub import topic_of

SITES = ("plant-a", "plant-b")
SERVICE_GROUP = "climate-service"


def reading(device: int, n: int) -> float:
    """A deterministic temperature, so the totals can be checked."""
    return round(18.0 + device + (n % 5) * 0.5, 2)


def run_device(url: str, site: str, device: int, readings: int) -> None:
    """One device: its own connection, ``readings`` temperature and humidity readings."""
    with ringbus.connect(url) as bus:
        name = f"dev-{device}"
        for n in range(readings):
            bus.publish(f"sensors.{site}.{name}.temperature",
                        Message.of({"celsius": reading(device, n), "n": n}, key=name, headers={"unit": "C"}))
            bus.publish(f"sensors.{site}.{name}.humidity",
                        Message.of({"percent": 40 + n % 7, "n": n}, key=name, headers={"unit": "%"}))


@dataclass
class Climate:
    """What the climate service has counted, per device."""

    count: dict[str, int] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    redelivered: int = 0

    def add(self, message: Message) -> None:
        _, site, device, _ = topic_of(message).split(".")
        name = f"{site}/{device}"
        self.count[name] = self.count.get(name, 0) + 1
        self.total[name] = self.total.get(name, 0.0) + message.value()["celsius"]
        self.redelivered += message.attempts > 0

    def mean(self, name: str) -> float:
        return self.total[name] / self.count[name]


def climate_service(bus: Bus) -> Subscription:
    return bus.subscribe("sensors.*.*.temperature", group=SERVICE_GROUP, durable=True)


def run(url: str, devices: int = 3, readings: int = 20, timeout: float = 10.0) -> tuple[Climate, int]:
    """The whole flow; returns what the service counted and how many readings the live display saw."""
    climate = Climate()
    expected = len(SITES) * devices * readings
    with ringbus.connect(url) as bus:
        bus.drop_group(SERVICE_GROUP)  # type: ignore[attr-defined]  # a fresh start for the demo
        climate_service(bus).close()  # the group exists (its session keeps the subscription) but is away
        with bus.subscribe("sensors.#") as display:
            threads = [threading.Thread(target=run_device, args=(url, site, d, readings))
                       for site in SITES for d in range(devices)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seen = 0
            while display.receive(timeout=0.5) is not None:
                seen += 1
        with climate_service(bus) as service:  # back: what waited in the broker comes first
            while sum(climate.count.values()) < expected:
                message = service.receive(timeout=timeout)
                if message is None:
                    raise TimeoutError(f"the climate service got {sum(climate.count.values())} of {expected} "
                                       "readings")
                climate.add(message)
                message.ack()
        bus.drop_group(SERVICE_GROUP)  # type: ignore[attr-defined]
    return climate, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=f"mqtt://127.0.0.1:1883?prefix=iot-demo-{uuid.uuid4().hex[:6]}/")
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--readings", type=int, default=20)
    args = parser.parse_args()
    climate, seen = run(args.url, args.devices, args.readings)
    print(f"live display saw {seen} readings (temperature and humidity)")
    print(f"climate service, back after being away, counted {sum(climate.count.values())} temperatures:")
    for name in sorted(climate.count):
        print(f"  {name:16} {climate.count[name]:4} readings, mean {climate.mean(name):.2f} C")


if __name__ == "__main__":
    main()
