"""``ringbus bench`` as a product, at a tiny scale: the JSON document, the chart, progress, peers left out,
a failing case, the plug-in contract of ringbus.bench.report. Nothing here asserts a speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ringbus.bench import report
from ringbus.bench._harness import Row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RECORD_KEYS = {"suite", "case", "contender", "unit", "ours", "n", "rounds", "ns_per_op", "ops_per_s",
               "bandwidth_gbs", "latency_us", "compared", "ratio", "target", "met"}
needs_matplotlib = pytest.mark.skipif(not report.plot_available(), reason="--plot needs matplotlib (test extra)")


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGBUS_")}
    return subprocess.run([sys.executable, "-m", "ringbus", "bench", "core", "--quick", *args], check=False,
                          capture_output=True,
                          text=True, cwd=tmp_path, env={**env, "HOME": str(tmp_path)}, timeout=300)


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


def test_json_is_one_document_on_stdout_with_progress_on_stderr(tmp_path: Path) -> None:
    result = bench(tmp_path, "--json", "--progress", "plain")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # the whole of stdout: nothing else is printed there
    assert doc["schema"] == report.JSON_SCHEMA and doc["suites"] == ["core"]
    assert (doc["rounds"], doc["scale"]) == (1, report.QUICK_SCALE)
    assert doc["failures"] == [] and doc["plot"] is None
    assert isinstance(doc["skipped"], list) and isinstance(doc["notes"], list)
    results = doc["results"]
    assert results and all(set(r) == RECORD_KEYS for r in results)
    cases: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        cases.setdefault(r["case"], []).append(r)
    for rows in cases.values():
        ours = [r for r in rows if r["ours"]]
        assert len(ours) == 1 and ours[0]["ratio"] is None  # ringbus's own row, then its peers
        peers = [r for r in rows if not r["ours"]]
        assert peers and all(r["ratio"] > 0 and r["ns_per_op"] > 0 and r["rounds"] == 1 for r in peers)
        assert all(r["met"] is None if r["target"] is None else isinstance(r["met"], bool) for r in peers)
    assert "[1/" in result.stderr and "round 1/1" in result.stderr


@needs_matplotlib
def test_plot_saves_a_png_beside_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.png"
    result = bench(tmp_path, "--plot", str(out), "--progress", "none")
    assert result.returncode == 0, result.stderr
    check_png(out)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ringbus ") and "speed-up" in lines[0]
    assert lines[1].split()[:2] == ["case", "contender"] and "(ringbus)" in result.stdout
    assert f"plot saved to {out}" in result.stdout
    assert result.stderr == ""


@needs_matplotlib
def test_json_and_plot_together(tmp_path: Path) -> None:
    out = tmp_path / "bench.png"
    result = bench(tmp_path, "--json", "--plot", str(out), "--progress", "none")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["plot"] == str(out)
    check_png(out)


# --- the plug-in contract, in process --------------------------------------------------------

PLUGIN = '''
from ringbus.bench._harness import Case, Row, timed

def missing_peers():
    return ["nosuchpeer (pip install nosuchpeer) is not installed: its rows are left out"]

def cases(scale=1.0, seed=0):
    def ours(n):
        return timed(lambda: sum(range(n)))

    def peer(n):
        return timed(lambda: [x for x in range(n)])

    def broken(n):
        raise ConnectionError("the peer went away")

    return [Case("sum", "item", max(1, int(1000 * scale)), ("ringbus thing", ours), [("list thing", peer)]),
            Case("broken", "item", 10, ("ringbus thing", ours), [("gone peer", broken)])]
'''

RESULTS = '''
from ringbus.bench._harness import Row

def results(scale, seed, rounds, progress):
    progress("own: round 1/1")
    yield Row("own way", "ringbus own", "op", 100.0, None, None, None, p50_us=0.1, p99_us=0.2, p90_us=0.15,
              p999_us=0.3, compared="p99")
    yield Row("own way", "peer own", "op", 300.0, 2.0, 1.5, None, p50_us=0.3, p99_us=0.4, p90_us=0.35,
              p999_us=0.5, compared="p99")
'''


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rbplugin_cases.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "rbplugin_results.py").write_text(textwrap.dedent(RESULTS))
    monkeypatch.syspath_prepend(str(tmp_path))
    suites = {**report.SUITES,
              "cases": report.Suite("cases", ("rbplugin_cases",), "a suite of cases"),
              "own": report.Suite("own", ("rbplugin_results",), "a suite of records")}
    monkeypatch.setattr(report, "SUITES", suites)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def start(self, total: int) -> None:
        self.events.append(("start", str(total)))

    def case(self, suite: str, name: str) -> None:
        self.events.append(("case", suite, name))

    def update(self, text: str) -> None:
        self.events.append(("update", text))

    def advance(self) -> None:
        self.events.append(("advance",))

    def note(self, text: str) -> None:
        self.events.append(("note", text))

    def close(self) -> None:
        self.events.append(("close",))


@pytest.mark.usefixtures("plugins")
def test_suites_plug_in_with_cases_or_results(tmp_path: Path) -> None:
    progress = Recorder()
    run = report.collect(["cases", "own"], rounds=2, scale=1.0, progress=progress)
    assert run.skipped == ["nosuchpeer (pip install nosuchpeer) is not installed: its rows are left out"]
    assert len(run.failures) == 1 and "broken failed: ConnectionError: the peer went away" in run.failures[0]
    assert [(r.suite, r.case, r.label, r.ours) for r in run.rows] == [
        ("cases", "sum", "ringbus thing", True), ("cases", "sum", "list thing", False),
        ("own", "own way", "ringbus own", True), ("own", "own way", "peer own", False)]
    assert run.rows[1].rounds == 2 and run.rows[1].ratio is not None and run.rows[1].ratio > 0
    assert run.rows[3].met is True
    assert progress.events[0] == ("note", run.skipped[0]) and progress.events[1] == ("start", "3")
    assert ("case", "own", "rbplugin_results") in progress.events and ("update", "own: round 1/1") in progress.events
    assert progress.events.count(("advance",)) == 3 and progress.events[-1] == ("close",)

    doc = json.loads(json.dumps(report.to_json(run)))
    assert doc["results"][2]["latency_us"] == {"p50": 0.1, "p90": 0.15, "p99": 0.2, "p99.9": 0.3}
    table = report.format_table(run.rows)
    assert table.splitlines()[0].split()[:2] == ["suite", "case"]  # two suites: a suite column
    assert "2.00x" in table and ">= 1.5x" in table and "yes" in table
    if report.plot_available():
        check_png(report.plot(run, tmp_path / "plugins.png"))


def test_a_module_without_cases_or_results_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rbplugin_empty.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(report, "SUITES", {"empty": report.Suite("empty", ("rbplugin_empty",), "nothing")})
    run = report.collect(["empty"])
    assert run.rows == [] and len(run.failures) == 1
    assert "setting up rbplugin_empty failed: TypeError: rbplugin_empty is listed" in run.failures[0]
    with pytest.raises(ValueError, match="unknown bench suite"):
        report.collect(["nonesuch"])


def test_missing_suite_modules_leave_the_suite_out(monkeypatch: pytest.MonkeyPatch) -> None:
    suites = {**report.SUITES, "ghost": report.Suite("ghost", ("ringbus.bench.no_such_module",), "not here")}
    monkeypatch.setattr(report, "SUITES", suites)
    names = report.available_suites()
    assert "core" in names and "ghost" not in names


def test_plain_progress_lines() -> None:
    import io

    out = io.StringIO()
    progress = report.make_progress("plain", out)
    progress.start(2)
    progress.case("core", "fifo")
    progress.update("fifo: round 1/3")
    progress.advance()
    progress.note("a peer is missing")
    assert out.getvalue().splitlines() == ["[1/2] core: fifo ...", "    round 1/3", "note: a peer is missing"]
    assert type(report.make_progress("auto", out)).__name__ == "_PlainProgress"  # not a terminal


def test_plot_of_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing was measured"):
        report.plot(report.BenchRun(["core"], 1, 1.0, 0), tmp_path / "empty.png")


def test_row_derived_fields() -> None:
    row = Row("c", "peer", "op", 50.0, 0.8, 1.0, None)
    assert (row.ours, row.met, row.ops_per_s) == (False, False, 2e7)


NOISY = '''
import os
from ringbus.bench._harness import Case, timed

def cases(scale=1.0, seed=0):
    def ours(n):
        print("noise from a contender")
        os.system("echo noise from a child process")
        return timed(lambda: sum(range(n)))

    return [Case("noisy", "item", 100, ("ringbus thing", ours), [("peer", ours)])]
'''


def test_json_stdout_holds_only_the_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    import argparse

    (tmp_path / "rbplugin_noisy.py").write_text(NOISY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(report, "SUITES", {"noisy": report.Suite("noisy", ("rbplugin_noisy",), "prints")})
    args = argparse.Namespace(suite="noisy", quick=False, rounds=1, scale=1.0, seed=0, json=True, plot=None,
                              progress="plain", debug=False)
    assert report.run_cli(args) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["results"][0]["case"] == "noisy"
    assert "noise from a contender" in err and "noise from a child process" in err
