"""Topics across a broker crash: a durable group's backlog and the retained publications survive kill -9."""

from __future__ import annotations

from pathlib import Path

import ringbus
from ringbus.broker.process import BrokerProcess


def test_durable_group_catches_up_and_earliest_replays_after_a_crash(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/broker.sock"
    data = tmp_path / "data"
    with BrokerProcess(data, endpoint) as broker:
        with ringbus.connect(endpoint) as bus:
            bus.subscribe("order.*", group="billing", durable=True).close()  # the group exists; nobody listens
            published = [bus.publish(f"order.{kind}", b"%d" % i) for i, kind in
                         enumerate(["placed", "paid", "shipped"] * 10)]
            bus.publish("invoice.sent", b"not for billing")
        broker.kill()
    with BrokerProcess(data, endpoint):
        with ringbus.connect(endpoint) as bus:
            with bus.subscribe("order.*", group="billing", durable=True) as billing:
                got = []
                while (message := billing.receive(timeout=2)) is not None:
                    got.append(message)
                    message.ack()
            assert [m.id for m in got] == published  # all of them, in publish order
            assert {m.headers[ringbus.bus.TOPIC_HEADER] for m in got} == {"order.placed", "order.paid",
                                                                           "order.shipped"}
            with bus.subscribe("order.paid", group="audit", durable=True, start="earliest") as audit:
                replayed = []
                while (message := audit.receive(timeout=1)) is not None:
                    replayed.append(message.body)
                    message.ack()
            assert replayed == [b"%d" % i for i in range(1, 30, 3)]
