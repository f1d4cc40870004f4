"""Pipes and filters: none lost, order where declared, back-pressure, dead letters, inline, durable, Unix filter.

Every property is shown with counts, orders and sets - never wall-clock time (the throughput of 2 processes
against 1 is a benchmark: ``ringbus.bench.pipeline``). The big run is the issue's 1,000,000 records through
3 stages (a few seconds here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

import ringbus
from ringbus.patterns import PatternStats
from ringbus.patterns.pipeline import (
    BusPipeline,
    DeadLetter,
    DeadLetterQueue,
    Pipeline,
    PipelineError,
    PipelineStats,
    Stage,
)

from . import pipeline_stages as st
from .bus_fixtures import python_env, run_example, wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
BIG = 1_000_000


def shm_names() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("rbpipe-")}


# --- none lost, order where declared -----------------------------------------------------------------------------

def test_a_million_records_through_three_stages_keep_their_order() -> None:
    """1,000,000 ints through inc -> square (2 processes) -> double, ordered: every output, in source order."""
    before = shm_names()
    pipeline = Pipeline([st.inc, Stage(st.square, processes=2), st.double], ordered=True)
    expected = 0
    for out in pipeline.run(range(BIG)):
        assert out == 2 * (expected + 1) ** 2, f"output {expected} out of order or wrong"
        expected += 1
    assert expected == BIG
    stats = pipeline.stats()
    assert isinstance(stats, PipelineStats) and isinstance(stats, PatternStats)
    assert stats.sent == stats.processed == BIG
    assert [(s.received, s.emitted, s.failed) for s in stats.stages] == [(BIG, BIG, 0)] * 3
    # The middle stage's 2 processes finished out of turn, and the sink's reorder buffer put them back.
    assert stats.reorder_peak > 0 and stats.reorder_held == 0
    assert shm_names() == before  # every channel unlinked


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_unordered_pipeline_loses_and_repeats_nothing(transport: str) -> None:
    """200,000 bytes records, the middle stage in 3 processes: the multiset of outputs is the expected one."""
    n = 200_000
    items = [b"%d" % i for i in range(n)]
    pipeline = Pipeline([st.tag, Stage(st.tag, processes=3), st.tag], transport=transport)
    outputs = Counter(pipeline.run(items))
    assert len(outputs) == n and set(outputs.values()) == {1}
    assert outputs == Counter(i + b"!!!" for i in items)
    assert pipeline.stats().stages[1].received == n


def test_ordered_over_zmq_and_a_stream_stage() -> None:
    """Ordered over ZeroMQ: a running sum (a stream stage fed in order after 2 processes) is exact."""
    n = 100_000
    pipeline = Pipeline([Stage(st.inc, processes=2), Stage(st.running_sum, stream=True)], ordered=True,
                        transport="zmq")
    sums = list(pipeline.run(range(n)))
    assert len(sums) == n
    assert sums[:4] == [1, 3, 6, 10] and sums[-1] == n * (n + 1) // 2


def test_filter_and_fan_out() -> None:
    """None drops an item, a generator gives several outputs, a tuple is one output unless fan_out=True."""
    pipeline = Pipeline([st.drop_odd, st.pair, Stage(st.pair, fan_out=True)], ordered=True)
    assert list(pipeline.run(range(6))) == [[0, 0], [0, 0], [2, 2], [2, 2], [4, 4], [4, 4]]
    words = Pipeline([st.split_words, st.upper], ordered=True)
    assert list(words.run(["a b", "", "c d e"])) == ["A", "B", "C", "D", "E"]
    stats = words.stats()
    assert [(s.received, s.emitted) for s in stats.stages] == [(3, 5), (5, 5)]


# --- back-pressure -----------------------------------------------------------------------------------------------

def test_a_slow_last_stage_holds_the_source_back() -> None:
    """The source can run ahead of the slow last stage only by what the channels and stages in between hold."""
    item = b"x" * 100  # 102 bytes as msgpack
    n = 3_000
    channel_bytes = 4096
    pipeline = Pipeline([st.tag, st.tag, st.slow_tag], channel_bytes=channel_bytes, batch=8)
    gaps: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            stats = pipeline.stats()
            if stats.stages:
                gaps.append(stats.sent - stats.stages[-1].received)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    received = 0
    try:
        for _ in pipeline.run(item for _ in range(n)):
            received += 1
    finally:
        done.set()
        sampler.join(5)
    assert received == n
    # Channels source->tag, tag->tag, tag->slow_tag; each holds at most channel_bytes / 102 items, and each of
    # the two tag processes holds at most one channel's worth while it works on it.
    per_channel = channel_bytes // len(item)
    bound = 3 * per_channel + 2 * per_channel
    assert len(gaps) > 50
    assert max(gaps) <= bound, f"the source ran {max(gaps)} items ahead of the slow stage (bound {bound})"
    assert max(gaps) < n // 5  # it was held back: with nothing in the way it would have been ~n ahead


# --- dead letters ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["processes", "inline"])
def test_failing_items_go_to_the_dead_letter_sink_and_the_rest_flow(mode: str) -> None:
    dead: list[DeadLetter] = []
    pipeline = Pipeline([st.inc, Stage(st.fail_every_tenth, processes=2), st.fan_then_fail], ordered=True,
                        dead_letter=dead.append)
    n = 1_000
    run = pipeline.run if mode == "processes" else pipeline.run_inline
    outputs = list(run(range(n)))
    survivors = [x + 1 for x in range(n) if (x + 1) % 10 != 3]
    expected = [v for x in survivors if x % 7 != 0 for v in (x, -x)]
    assert outputs == expected  # in order, nothing but the failed items missing
    by_stage = Counter(letter.stage for letter in dead)
    assert by_stage == {"fail_every_tenth": 100, "fan_then_fail": sum(1 for x in survivors if x % 7 == 0)}
    first = next(letter for letter in dead if letter.stage == "fail_every_tenth")
    assert first.error_type == "ValueError" and first.error == f"ValueError: bad item {first.item}"
    assert first.item % 10 == 3
    half = next(letter for letter in dead if letter.stage == "fan_then_fail")
    assert half.error.startswith("RuntimeError: half way through") and half.item % 7 == 0  # none of its outputs
    stats = pipeline.stats()
    assert stats.dead_lettered == stats.failed == len(dead)


def test_an_output_that_cannot_be_encoded_is_dead_lettered() -> None:
    dead: list[DeadLetter] = []
    pipeline = Pipeline([st.unencodable, st.inc], dead_letter=dead.append, ordered=True)
    assert list(pipeline.run(range(10))) == [x + 1 for x in range(10) if x != 5]
    assert len(dead) == 1 and dead[0].stage == "unencodable" and dead[0].item.startswith("<object object")
    assert "cannot be sent" in dead[0].error


def test_dead_letters_to_a_bus_queue(url: str) -> None:  # noqa: F811 - fixture
    queue = f"pipe-dlq-{uuid.uuid4().hex[:8]}"
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        pipeline = Pipeline([st.fail_every_tenth], dead_letter=DeadLetterQueue(bus, queue))
        outputs = list(pipeline.run(range(100)))
        assert sorted(outputs) == [x for x in range(100) if x % 10 != 3]
        letters = []
        while (message := bus.receive(queue, timeout=1.0)) is not None:
            letters.append((message.value(), message.headers["ringbus-stage"], message.headers["ringbus-error"]))
            message.ack()
    assert sorted(letters) == [(x, "fail_every_tenth", f"ValueError: bad item {x}") for x in range(3, 100, 10)]


# --- failures that stop a run ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["processes", "inline"])
def test_a_stream_stage_that_raises_stops_the_run_naming_it(mode: str) -> None:
    pipeline = Pipeline([st.inc, Stage(st.fail_at_hundred, stream=True)])
    run = pipeline.run if mode == "processes" else pipeline.run_inline
    with pytest.raises(PipelineError, match=r"fail_at_hundred.*KeyError.*not restarted"):
        list(run(range(1000)))


def test_a_killed_stage_process_stops_the_run_and_leaves_nothing_behind() -> None:
    before = shm_names()
    pipeline = Pipeline([st.inc, Stage(st.hang, processes=2), st.double])
    outputs = pipeline.run(range(100_000))
    next(outputs)
    pids = pipeline.pids
    assert sorted(pids) == ["double", "hang", "inc"] and len(pids["hang"]) == 2
    for pid in pids["hang"]:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(PipelineError, match=r"stage 'hang' \(process \d\) was killed by SIGKILL"):
        for _ in outputs:
            pass
    assert pipeline.pids == {}
    for pid in (p for group in pids.values() for p in group):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # every stage process is gone (reaped)
    assert shm_names() == before


def test_stopping_early_stops_the_processes() -> None:
    pipeline = Pipeline([st.inc, st.double])
    outputs = pipeline.run(range(10_000_000))
    assert [next(outputs) for _ in range(3)] and len(pipeline.pids) == 2
    pids = [p for group in pipeline.pids.values() for p in group]
    outputs.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_stage_functions_must_be_importable_for_processes() -> None:
    def local(x: int) -> int:
        return x

    for fn, what in ((lambda x: x, "lambda"), (local, "nested")):
        pipeline = Pipeline([st.inc, fn])
        with pytest.raises(TypeError, match="module level"):
            pipeline.run(range(3))
        assert list(pipeline.run_inline(range(3))) == [1, 2, 3]  # fine in one process
        del what


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline([])
    with pytest.raises(TypeError, match=r"stages\[1\]"):
        Pipeline([st.inc, 42])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="processes"):
        Stage(st.inc, processes=0)
    with pytest.raises(ValueError, match="stream stage in an ordered pipeline"):
        Pipeline([Stage(st.count, stream=True, processes=2)], ordered=True)
    with pytest.raises(ValueError, match="transport"):
        Pipeline([st.inc], transport="tcp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel_bytes"):
        Pipeline([st.inc], channel_bytes=10)
    with pytest.raises(TypeError, match="cannot be encoded"):
        list(Pipeline([st.inc]).run([object()]))
    names = [s.name for s in Pipeline([st.inc, st.inc]).stages]
    assert names == ["inc", "inc#2"]


# --- in-process chaining -------------------------------------------------------------------------------------------

def test_inline_chaining_passes_objects_untouched() -> None:
    marker = object()
    pipeline = Pipeline([lambda x: (x, marker), st.pair, Stage(lambda pairs: (p for p in pairs), stream=True)])
    out = list(pipeline.run_inline(range(3)))
    assert out == [((0, marker), (0, marker)), ((1, marker), (1, marker)), ((2, marker), (2, marker))]
    assert isinstance(out[0], tuple) and out[0][0][1] is marker  # no encoding: tuples stay tuples
    stats = pipeline.stats()
    assert stats.sent == stats.processed == 3
    assert [(s.received, s.emitted) for s in stats.stages] == [(3, 3), (3, 3), (3, 3)]


def test_inline_and_processes_agree() -> None:
    stages = [st.split_words, Stage(st.reject_x, processes=2), st.upper, Stage(st.count, stream=True)]
    lines = ["a b c", "xX y", "", "z"] * 50
    inline_dead: list[DeadLetter] = []
    process_dead: list[DeadLetter] = []
    inline = list(Pipeline(stages, ordered=True, dead_letter=inline_dead.append).run_inline(lines))
    processes = list(Pipeline(stages, ordered=True, dead_letter=process_dead.append).run(lines))
    assert inline == processes == [250]
    assert inline_dead == process_dead and len(inline_dead) == 50


# --- durable: Bus queues and the Kafka-style description -------------------------------------------------------------

def validate_order(order: dict) -> dict:
    if order["qty"] <= 0:
        raise ValueError(f"order {order['id']}: qty must be > 0")
    return order


def apply_discount(order: dict) -> dict:
    return {**order, "total": round(order["qty"] * order["price"] * (0.9 if order["qty"] >= 10 else 1.0), 2)}


def finalize_order(order: dict) -> dict:
    return {**order, "status": "final"}


KAFKA_DOC = {
    "input_topic": "raw_orders",
    "filters": [
        {"name": "validateOrder", "output_topic": "validated_orders"},
        {"name": "applyDiscount", "output_topic": "discounted_orders"},
        {"name": "finalizeOrder", "output_topic": "final_orders"},
    ],
}
REGISTRY = {"validateOrder": validate_order, "applyDiscount": apply_discount, "finalizeOrder": finalize_order}


def _renamed(doc: dict, suffix: str) -> dict:
    """The document with every topic made unique to this test (the broker is shared by the module)."""
    return {"input_topic": doc["input_topic"] + suffix,
            "filters": [{**f, "output_topic": f["output_topic"] + suffix} for f in doc["filters"]]}


def drain(bus: ringbus.Bus, queue: str, want: int) -> list:
    got = []
    deadline = time.monotonic() + 60
    while len(got) < want and time.monotonic() < deadline:
        message = bus.receive(queue, timeout=0.5)
        if message is not None:
            got.append(message)
            message.ack()
    return got


def test_kafka_json_pipeline_on_a_bus(url: str) -> None:  # noqa: F811 - fixture
    """The seed document's three filters as a durable pipeline: 1,000 orders, 10% invalid."""
    suffix = f"-{uuid.uuid4().hex[:6]}"
    doc = _renamed(KAFKA_DOC, suffix)
    n = 1_000
    orders = [{"id": i, "qty": 0 if i % 10 == 0 else i % 20, "price": 2.5} for i in range(n)]
    with ringbus.connect(url) as bus:
        pipeline = Pipeline.from_kafka_json(json.dumps(doc), REGISTRY, bus)
        assert isinstance(pipeline, BusPipeline)
        assert pipeline.queues == ["raw_orders" + suffix, "validated_orders" + suffix,
                                   "discounted_orders" + suffix, "final_orders" + suffix]
        with pipeline:
            assert pipeline.send(orders, bus=bus) == n
            final = drain(bus, "final_orders" + suffix, 900)
            dead = drain(bus, "raw_orders" + suffix + ".dlq", 100)
        stats = pipeline.stats()
    values = [m.value() for m in final]
    assert sorted(v["id"] for v in values) == [i for i in range(n) if i % 10]
    assert all(v["status"] == "final" and v["total"] == round(v["qty"] * 2.5 * (0.9 if v["qty"] >= 10 else 1), 2)
               for v in values)
    assert sorted(m.value()["id"] for m in dead) == list(range(0, n, 10))
    headers = dead[0].headers
    assert headers["ringbus-stage"] == "validateOrder" and headers["ringbus-dead-from"] == "raw_orders" + suffix
    assert headers["ringbus-error"].startswith("ValueError: order ") and headers["ringbus-error-type"] == "ValueError"
    assert [(s.name, s.received, s.emitted, s.failed) for s in stats.stages] == [
        ("validateOrder", n, 900, 100), ("applyDiscount", 900, 900, 0), ("finalizeOrder", 900, 900, 0)]


def test_a_durable_pipeline_stopped_half_way_resumes_without_loss(thread_broker: str) -> None:  # noqa: F811
    """Items wait in the queues between runs: a second pipeline picks up where the first stopped."""
    suffix = f"-{uuid.uuid4().hex[:6]}"
    queues = [f"{name}{suffix}" for name in ("in", "mid", "out")]
    n = 300
    with ringbus.connect(thread_broker) as bus:
        first = BusPipeline(bus, queues[0], [(st.inc, queues[1]), (st.slow_int, queues[2])])
        first.start()
        first.send(range(n), bus=bus)
        wait_until(lambda: first.stats().stages[1].received >= 20, "the slow stage took 20 items")
        assert first.stop()
        done_first = first.stats().stages[1].emitted
        assert done_first < n  # it stopped half way
        second = BusPipeline(bus, queues[0], [(st.inc, queues[1]), (st.slow_int, queues[2])])
        with second:
            got = drain(bus, queues[2], n)
    assert sorted(m.value() for m in got) == [x + 1 for x in range(n)]


def test_kafka_json_errors_name_the_field_or_filter() -> None:
    bus = "memory://kafka-json-errors"
    cases = [
        ({**KAFKA_DOC, "partitions": 3}, "unknown field 'partitions'"),
        ({"filters": KAFKA_DOC["filters"]}, "no 'input_topic' field"),
        ({**KAFKA_DOC, "filters": [{"name": "validateOrder", "output": "x"}]},
         r"unknown field 'output' in filters\[0\]"),
        ({**KAFKA_DOC, "filters": [{"name": "validateOrder"}]}, r"filters\[0\] needs a string 'output_topic'"),
        ({**KAFKA_DOC, "filters": [{"name": "shipOrder", "output_topic": "x"}]},
         r"filter 'shipOrder' \(filters\[0\]\) is not in the registry"),
        ({**KAFKA_DOC, "filters": []}, "filters must be a non-empty list"),
    ]
    for doc, message in cases:
        with pytest.raises(ValueError, match=message):
            Pipeline.from_kafka_json(doc, REGISTRY, bus)
    with pytest.raises(ValueError, match="not valid JSON"):
        Pipeline.from_kafka_json("{input_topic:", REGISTRY, bus)


# --- the Unix filter -----------------------------------------------------------------------------------------------

def run_filter(args: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "ringbus.patterns.pipeline", *args], input=stdin,
                          capture_output=True, timeout=60, cwd=ROOT / "tests", env=python_env())


def test_stdin_to_stdout_filter_composes_with_unix_pipes() -> None:
    lines = b"hello world\nfoo bar\nxylophone here\n\nlast line"
    result = run_filter(["--stage", "patterns.pipeline_stages:upper", "--stage",
                         "patterns.pipeline_stages:split_words@2", "--stage", "patterns.pipeline_stages:reject_x"],
                        lines)
    assert result.stdout.decode().splitlines() == ["HELLO", "WORLD", "FOO", "BAR", "HERE", "LAST", "LINE"]
    [letter] = [json.loads(line) for line in result.stderr.decode().splitlines()]
    assert letter == {"stage": "reject_x", "error": "ValueError: no X allowed: XYLOPHONE", "item": "XYLOPHONE"}
    assert result.returncode == 1  # something was dead-lettered

    shell = subprocess.run(f"printf 'a b\\nc\\n' | {sys.executable} -m ringbus.patterns.pipeline --stage "
                           "patterns.pipeline_stages:split_words --stream patterns.pipeline_stages:count | cat",
                           shell=True, capture_output=True, timeout=60, cwd=ROOT / "tests", env=python_env())
    assert shell.returncode == 0 and shell.stdout == b"3\n"


def test_msgpack_filter_and_bad_arguments() -> None:
    import msgspec

    values = [1, 2, 3, 10**12, 7]
    stdin = b"".join(msgspec.msgpack.encode(v) for v in values)
    result = run_filter(["--msgpack", "--stage", "patterns.pipeline_stages:inc", "--stage",
                         "patterns.pipeline_stages:double"], stdin)
    assert result.returncode == 0, result.stderr
    decoder = msgspec.msgpack.Decoder()
    out, data = [], result.stdout
    while data:  # each output is one msgpack object; they are small ints here
        from ringbus.patterns._pipeline_cli import _msgpack_end

        end = _msgpack_end(data, 0)
        assert end is not None
        out.append(decoder.decode(data[:end]))
        data = data[end:]
    assert out == [(v + 1) * 2 for v in values]
    bad = run_filter(["--stage", "patterns.pipeline_stages:nothing_here"], b"")
    assert bad.returncode == 2 and b"has no 'nothing_here'" in bad.stderr


# --- the example ---------------------------------------------------------------------------------------------------

def test_log_pipeline_example_runs() -> None:
    out = run_example("log_pipeline.py")
    assert "50,000 log lines through parse (2 processes) -> enrich -> aggregate" in out
    assert "lines accounted for: 50,000 of 50,000 (lost: 0)" in out


def test_benchmark_cases_run_at_a_tiny_scale() -> None:
    """The benchmark's contenders deliver every item (their times are for `ringbus bench`, not checked here)."""
    from ringbus.bench import pipeline as bench

    cases = bench.cases(scale=0.001)
    assert [case.target for case in cases] == [{"multiprocessing.Queue, one item per put": 5.0},
                                               {"middle stage in 1 process": 1.7}]
    for case in cases:
        for _, contender in [case.ours, *case.peers]:
            assert contender(300) > 0  # raises if an item went missing


def test_the_filter_answers_a_live_input_line_by_line() -> None:
    """Like `tail -f | filter`: an output comes out while standard input is still open."""
    import select as select_module

    child = subprocess.Popen([sys.executable, "-m", "ringbus.patterns.pipeline", "--stage",
                              "patterns.pipeline_stages:upper", "--stage", "patterns.pipeline_stages:split_words"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT / "tests", env=python_env())
    assert child.stdin is not None and child.stdout is not None
    try:
        received = b""
        fd = child.stdout.fileno()
        for line, expected in ((b"first line\n", b"FIRST\nLINE\n"), (b"second\n", b"FIRST\nLINE\nSECOND\n")):
            child.stdin.write(line)
            child.stdin.flush()
            while received != expected:
                ready, _, _ = select_module.select([fd], [], [], 60)
                assert ready, f"no output while the input stays open (so far {received!r})"
                received += os.read(fd, 4096)
        child.stdin.close()
        assert child.wait(60) == 0 and child.stdout.read() == b""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        if not child.stdin.closed:
            child.stdin.close()
