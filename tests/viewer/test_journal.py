"""The intake log: records come back in order after a position; a record cut short ends its segment; a segment
leaves once released; a failed write is undone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otelflow.viewer.history.journal import Journal, JournalError


def test_records_come_back_after_a_position_in_order(tmp_path: Path) -> None:
    log = Journal(tmp_path / "intake", segment_bytes=200)
    log.open()
    ends = [log.append(i % 2 + 1, bytes([i]) * 50) for i in range(10)]  # several segments of 200 bytes
    assert ends == sorted(ends)
    log.close()
    again = Journal(tmp_path / "intake", segment_bytes=200)
    again.open()
    assert [(end, kind, body[:1]) for end, kind, body in again.records(0)] == [
        (end, i % 2 + 1, bytes([i])) for i, end in enumerate(ends)
    ]
    assert [body[0] for _, _, body in again.records(ends[4])] == [5, 6, 7, 8, 9]
    before = len(list((tmp_path / "intake").iterdir()))
    again.release(ends[4])
    assert len(list((tmp_path / "intake").iterdir())) < before
    assert [body[0] for _, _, body in again.records(ends[4])] == [5, 6, 7, 8, 9]


def test_a_record_cut_short_by_a_crash_ends_its_segment(tmp_path: Path) -> None:
    log = Journal(tmp_path / "intake")
    log.open()
    first = log.append(1, b"whole")
    log.append(1, b"cut short by a crash")
    log.close()
    (segment,) = (tmp_path / "intake").iterdir()
    segment.write_bytes(segment.read_bytes()[:-5])
    again = Journal(tmp_path / "intake")
    again.open()
    assert list(again.records(0)) == [(first, 1, b"whole")]
    later = again.append(2, b"after the restart")  # appends go to a new segment, after the damage
    assert later > first


def test_a_failed_write_is_undone_and_says_why(tmp_path: Path) -> None:
    script = f"""
import resource
from otelflow.viewer.history.journal import Journal, JournalError
log = Journal({str(tmp_path / "intake")!r}); log.open()
log.append(1, b"a" * 1000)
resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))  # a disk that fills up
try:
    log.append(1, b"b" * 5000)
except JournalError as exc:
    print("refused:", exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
log.append(1, b"c" * 10)
log.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "refused: cannot write to the intake log" in done.stdout
    again = Journal(tmp_path / "intake")
    again.open()
    assert [body[:1] for _, _, body in again.records(0)] == [b"a", b"c"]  # the failed record left no trace


def test_a_folder_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(JournalError, match="cannot use the intake log"):
        Journal(tmp_path / "file" / "intake").open()
