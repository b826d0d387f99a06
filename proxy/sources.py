"""Record files: paths and globs, plain or gzipped, read in blocks of lines; big ones split at line ends."""

from __future__ import annotations

import glob
import gzip
import io
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Big enough that reading costs little per line, small enough that a block and its records stay in cache
# (a 1 MB block was slower).
_BLOCK_BYTES = 1 << 18


class RecordFileError(Exception):
    """A record file that cannot be found or read, the message naming it and what to do."""


@dataclass(frozen=True)
class Piece:
    """A whole record file, or the lines starting in [start, end) of a plain one."""

    path: Path
    start: int = 0
    end: int | None = None


def expand(patterns: Iterable[str | Path]) -> list[Path]:
    """Paths and globs to the existing files they name, in the order given (each glob sorted)."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(Path(match) for match in glob.glob(text) if os.path.isfile(match))
            if not matches:
                raise RecordFileError(f"{text}: no record file matches this pattern; check --file")
            found.extend(match for match in matches if match not in found)
        else:
            path = Path(text)
            if not path.is_file():
                what = "is a folder, not a record file" if path.is_dir() else "no such record file"
                raise RecordFileError(
                    f"{text}: {what}; pass --file PATH, or set COST_TRACKING_FILE or the config's"
                    " features.cost_tracking.file"
                )
            if path not in found:
                found.append(path)
    return found


def is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def split(paths: Iterable[Path], parts: int, min_bytes: int) -> list[Piece]:
    """Pieces to read in parallel: plain files of at least min_bytes are cut into `parts` at line ends."""
    pieces: list[Piece] = []
    for path in paths:
        size = path.stat().st_size
        if is_gzip(path) or parts < 2 or size < min_bytes:
            pieces.append(Piece(path))
            continue
        cuts = [0]
        with open(path, "rb") as file:
            for index in range(1, parts):
                file.seek(max(size * index // parts, cuts[-1]))
                file.readline()
                cuts.append(min(file.tell(), size))
        cuts.append(size)
        pieces.extend(Piece(path, low, high) for low, high in zip(cuts, cuts[1:], strict=False) if high > low)
    return pieces


def read_blocks(piece: Piece) -> Iterator[bytes]:
    """The lines of a piece in blocks of about 256 KB, each ending at a line end (or the file's end)."""
    try:
        with gzip.open(piece.path, "rb") if is_gzip(piece.path) else open(piece.path, "rb") as file:
            file.seek(piece.start)
            remaining = sys.maxsize if piece.end is None else piece.end - piece.start
            while remaining > 0:
                block = file.read(min(_BLOCK_BYTES, remaining))
                if not block:
                    return
                if not block.endswith(b"\n"):
                    block += file.readline()  # pieces end at line ends, so this stays inside the piece
                remaining -= len(block)
                yield block
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise RecordFileError(f"{piece.path}: cannot read record file: {exc}") from exc


def read_lines(piece: Piece) -> Iterator[bytes]:
    """The lines of a piece, newline included."""
    for block in read_blocks(piece):
        yield from io.BytesIO(block)
