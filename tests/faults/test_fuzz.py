"""Issue 10, part 9: fuzzing the decoders and validators that read what a peer or a disk hands ringbus.

Targets (fuzz_targets.py): the wire codec's frame decoder, the broker's command decoder (a real Broker's
dispatch), the log's record decoding and recovery over fuzzed segment files, the broker's recovery of records
whose CRC holds but whose content is fuzzed, claim-check key validation against a real store directory, and
webhook URL validation (against how httpx would parse the same URL).

Two engines run each target:

- atheris (libFuzzer, coverage-guided over ringbus's Python code), in a subprocess per target: a few seconds
  each in the normal run, 60 s each with RINGBUS_FULL=1. Skipped when atheris is not installed
  (``pip install atheris``; it ships Linux wheels for CPython 3.11).
- hypothesis over the same byte-level targets, seeded with well-formed inputs and their mutations.

Every input that ever crashed a target is kept under regressions/<target>/ and replayed here. Executions and
crashes per target and engine go to the figures file (figures.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .figures import record
from .fuzz_targets import TARGETS, close_all, seeds
from .tiers import tiers

HERE = Path(__file__).parent
REGRESSIONS = HERE / "regressions"
FAST_SECONDS, FULL_SECONDS = 3, 60  # atheris time per target
FAST_EXAMPLES, FULL_EXAMPLES = 200, 5000  # hypothesis examples per target
ATHERIS = importlib.util.find_spec("atheris") is not None


@pytest.fixture(autouse=True)
def quiet_and_clean() -> Iterator[None]:
    """Fuzzed logs and stores make the broker log every damaged record: keep the run's output readable."""
    logger = logging.getLogger("ringbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
        close_all()


# -- crash inputs found so far ------------------------------------------------------------------------------------

REGRESSION_FILES = sorted(REGRESSIONS.glob("*/*.bin"))


@pytest.mark.parametrize("path", REGRESSION_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in REGRESSION_FILES])
def test_a_crash_input_found_once_stays_fixed(path: Path) -> None:
    assert path.parent.name in TARGETS, f"{path} is not under a target's directory"
    TARGETS[path.parent.name](path.read_bytes())


def test_every_target_has_seeds_that_pass() -> None:
    for name, target in TARGETS.items():
        for data in seeds(name):
            target(data)


# -- atheris ------------------------------------------------------------------------------------------------------

_STAT = re.compile(r"stat::(\w+):\s+(\d+)")


@pytest.mark.skipif(not ATHERIS, reason="atheris is not installed (pip install atheris); hypothesis runs the "
                                        "same targets below")
@pytest.mark.parametrize("target", sorted(TARGETS))
@tiers(FAST_SECONDS, FULL_SECONDS, "seconds")
def test_atheris_finds_no_crash(target: str, seconds: int, tmp_path: Path) -> None:
    corpus, seed_dir, artifacts = tmp_path / "corpus", tmp_path / "seeds", tmp_path / "artifacts"
    scratch = tmp_path / "scratch"
    for d in (corpus, seed_dir, artifacts, scratch):
        d.mkdir()
    for i, data in enumerate(seeds(target)):
        (seed_dir / f"seed-{i}").write_bytes(data)
    # libFuzzer adds what it finds to the first directory only: the seeds stay as they are.
    command = [sys.executable, str(HERE / "fuzz_targets.py"), target, f"-max_total_time={seconds}",
               "-timeout=20", "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={artifacts}/",
               str(corpus), str(seed_dir)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=seconds + 120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "RINGBUS_FUZZ_SCRATCH": str(scratch)})
    stats = {name: int(value) for name, value in _STAT.findall(done.stderr)}
    crashes = sorted(artifacts.iterdir())
    record(f"fuzz.atheris.{target}", engine="atheris", seconds=seconds, wall=round(time.monotonic() - started, 1),
           executions=stats.get("number_of_executed_units", 0), corpus=len(list(corpus.iterdir())),
           crashes=len(crashes), exit=done.returncode)
    if crashes or done.returncode != 0:
        found = crashes[0].read_bytes() if crashes else b""
        tail = "\n".join(done.stderr.splitlines()[-40:])
        pytest.fail(f"atheris crashed {target} (exit {done.returncode}); input {found[:512].hex()} "
                    f"(fix it and keep it as regressions/{target}/<what>.bin):\n{tail}")
    assert stats.get("number_of_executed_units", 0) > 0, f"atheris ran no input:\n{done.stderr[-2000:]}"


# -- hypothesis ---------------------------------------------------------------------------------------------------


def _splice(case: tuple[bytes, bytes, int, bool]) -> bytes:
    base, patch, at, overwrite = case
    at %= len(base) + 1
    return base[:at] + patch + base[at + len(patch) if overwrite else at:]


def inputs(target: str) -> st.SearchStrategy[bytes]:
    """Raw bytes, the target's seeds, and the seeds with a few bytes overwritten or inserted somewhere."""
    seeded = st.sampled_from(seeds(target))
    mutated = st.tuples(seeded, st.binary(min_size=1, max_size=8), st.integers(0, 4096), st.booleans()).map(_splice)
    return st.one_of(st.binary(max_size=512), seeded, mutated)


@pytest.mark.parametrize("target", sorted(TARGETS))
@tiers(FAST_EXAMPLES, FULL_EXAMPLES, "examples")
def test_hypothesis_finds_no_crash(target: str, examples: int) -> None:
    run = TARGETS[target]
    executed = [0]

    @settings(max_examples=examples, deadline=None, database=None)
    @given(inputs(target))
    def fuzz(data: bytes) -> None:
        executed[0] += 1
        run(data)

    try:
        fuzz()
    except BaseException:
        record(f"fuzz.hypothesis.{target}", engine="hypothesis", examples=examples, executions=executed[0], crashes=1)
        raise
    record(f"fuzz.hypothesis.{target}", engine="hypothesis", examples=examples, executions=executed[0], crashes=0)
