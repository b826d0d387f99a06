from pathlib import Path

import pytest
from cost_records import lines, record, write

from proxy.sources import Piece, RecordFileError, expand, read_blocks, read_lines, split


def test_expand_reads_paths_and_sorted_globs_once_each(tmp_path: Path) -> None:
    rotated = write(tmp_path / "cost-tracking.jsonl.1.gz", [record()])
    current = write(tmp_path / "cost-tracking.jsonl", [record()])
    write(tmp_path / "other.txt", [record()])
    assert expand([str(tmp_path / "cost-tracking.jsonl*")]) == [current, rotated]
    assert expand([current, str(tmp_path / "*.gz"), str(current)]) == [current, rotated]


def test_missing_files_and_empty_globs_are_errors_naming_them(tmp_path: Path) -> None:
    with pytest.raises(RecordFileError, match=r"nope\.jsonl: no such record file; pass --file PATH"):
        expand([tmp_path / "nope.jsonl"])
    with pytest.raises(RecordFileError, match=r"\*\.jsonl: no record file matches this pattern"):
        expand([str(tmp_path / "*.jsonl")])
    with pytest.raises(RecordFileError, match="is a folder"):
        expand([tmp_path])


def test_gzip_files_are_read(tmp_path: Path) -> None:
    path = write(tmp_path / "old.jsonl.gz", [record(), b"torn"])
    assert list(read_lines(Piece(path)))[1] == b"torn"


@pytest.mark.parametrize("parts", [2, 3, 7, 50])
def test_split_pieces_hold_every_line_exactly_once(tmp_path: Path, parts: int) -> None:
    items = [record(request_id=f"r{index}" * (index % 7)) for index in range(101)] + [b'{"torn": ']
    path = write(tmp_path / "records.jsonl", items)
    pieces = split([path], parts, min_bytes=1)
    assert len(pieces) > 1
    assert pieces[0].start == 0 and pieces[-1].end == path.stat().st_size
    assert all(left.end == right.start for left, right in zip(pieces, pieces[1:], strict=False))
    read = [line for piece in pieces for line in read_lines(piece)]
    assert read == path.read_bytes().splitlines(keepends=True)


def test_split_keeps_small_and_gzip_files_whole(tmp_path: Path) -> None:
    small = write(tmp_path / "small.jsonl", [record()])
    packed = write(tmp_path / "big.jsonl.gz", [record()] * 100)
    assert split([small, packed], 2, min_bytes=1000) == [Piece(small), Piece(packed)]


@pytest.mark.parametrize("name", ["records.jsonl", "records.jsonl.gz"])
def test_blocks_end_at_line_ends_even_after_a_line_longer_than_a_block(tmp_path: Path, name: str) -> None:
    items = [record(request_id=f"r{index}") for index in range(800)]
    items[300] = record(request_id="x" * 300_000)
    path = write(tmp_path / name, items + [b'{"torn": '])
    blocks = list(read_blocks(Piece(path)))
    assert len(blocks) > 2
    assert all(block.endswith(b"\n") for block in blocks[:-1])
    assert b"".join(blocks) == lines(items) + b'{"torn": '
