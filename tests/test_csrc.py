"""The C core on its own: csrc/tests/*.c built with sanitizers and run (no Python between threads)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CC = shutil.which("cc") or shutil.which("gcc")

pytestmark = pytest.mark.skipif(CC is None or not CSRC.is_dir(),
                                reason="needs a C compiler and the source tree's csrc/")

SANITIZERS = {
    "thread": ["-fsanitize=thread"],
    "address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
}


def build_and_run(tmp_path: Path, source: str, sanitizer: str) -> subprocess.CompletedProcess[str]:
    binary = tmp_path / f"{Path(source).stem}-{sanitizer}"
    flags = ["-std=gnu11", "-O1", "-g", "-pthread", "-DRINGBUS_DEBUG=1", f"-I{CSRC}", *SANITIZERS[sanitizer]]
    subprocess.run([CC, *flags, str(CSRC / "tests" / source), "-o", str(binary)], check=True, capture_output=True,
                   text=True)
    return subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("sanitizer", sorted(SANITIZERS))
def test_ring_mpmc_moves_every_item_exactly_once(tmp_path: Path, sanitizer: str) -> None:
    result = build_and_run(tmp_path, "test_ring_mpmc.c", sanitizer)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 duplicated or invalid, 0 missing, 0 left" in result.stdout
    assert "WARNING: ThreadSanitizer" not in result.stderr


def test_heap_and_records_match_their_models(tmp_path: Path) -> None:
    result = build_and_run(tmp_path, "test_heap_records.c", "address")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "heap: ok, records: ok" in result.stdout
