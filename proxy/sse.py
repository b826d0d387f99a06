"""Incremental server-sent-events scanner: feed(bytes) -> events, finish(). No I/O.

Built like httpx's LineDecoder: state in, bytes in, events out. It copes with events split at any
byte across reads, CRLF / CR / LF line endings, a leading BOM, comment lines, multi-line data and a
missing final blank line. Each event carries its absolute byte span so a caller can forward or drop
exact bytes.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_EOL = re.compile(rb"\r\n|\r|\n")
# The longest line read: a Responses API `response.completed` carries the whole output, images in
# base64 included, and its usage with it. Longer lines pass on unread, however the reads cut them.
MAX_LINE = 16 << 20
BOM = b"\xef\xbb\xbf"  # one at the stream's start is not part of its first line (the SSE spec ignores it)


class SSEEvent(NamedTuple):
    event: bytes | None
    data: bytes
    start: int
    end: int


class SSEScanner:
    """Splits a byte stream into SSE events.

    `boundary` is the absolute offset up to which every byte belongs to a finished block (an event,
    a comment, or a line too long to scan): bytes before it can be released to a client without
    waiting for anything more. A line longer than MAX_LINE is not kept (the buffer stays bounded);
    the event it belongs to is not reported and is counted in `oversized`, whether the line came in
    one read or many. A line that comes in many reads is joined once, when its end arrives.
    """

    def __init__(self) -> None:
        self._buf = b""  # the unfinished line (or a CR that may be the first half of CRLF)
        self._more: list[bytes] = []  # later pieces of a long unfinished line, none with a CR or LF
        self._more_size = 0
        self._offset = 0
        self._data: list[bytes] = []
        self._event: bytes | None = None
        self._start = 0
        self._skip_line = False
        self._skip_event = False
        self.boundary = 0
        self.oversized = 0
        self.unfinished: int | None = None  # set by finish(): where the block the stream ended inside began

    def _within(self) -> bool:
        """Within a line or an event, or skipping an oversized one: only the line-by-line path keeps track."""
        return bool(self._buf or self._data or self._skip_line or self._skip_event or self._event is not None)

    def take_event(self, chunk: bytes) -> bytes | None:
        """The data of `chunk` if it is exactly one event of one `data: ` line and no line or event is
        pending (how OpenAI-style servers send nearly every read), taken as feed() would take it;
        else None, and nothing is taken."""
        if (
            chunk.startswith(b"data: ")
            and len(chunk) <= MAX_LINE + 2
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and not self._within()
        ):
            self._offset = self._start = self.boundary = self._offset + len(chunk)
            return chunk[6:-2]
        return None

    def take_events(self, chunk: bytes, start: int, end: int) -> int:
        """How many events `chunk[start:end]` holds if it is whole one-line `data: ` events and nothing
        else (LF line endings) and no line or event is pending: they are taken as feed() would take
        them, without being cut out. Else 0, and nothing is taken."""
        # The run starts a "data: " line and ends in "\n\n"; between, each "\n\ndata: " ends an event and
        # starts the next. Those k separators and the final "\n\n" are 2k + 2 LFs, none shared (a
        # separator is followed by "data: ", the end by nothing): if that is every LF in the run, every
        # event is one line, and there are k + 1 of them.
        blocks = chunk.count(b"\n\ndata: ", start, end) + 1
        if (
            chunk.startswith(b"data: ", start)
            and end - start <= MAX_LINE + 2
            and chunk.endswith(b"\n\n", start, end)
            and chunk.count(b"\n", start, end) == 2 * blocks
            and chunk.find(b"\r", start, end) < 0
            and not self._within()
        ):
            self._offset = self._start = self.boundary = self._offset + end - start
            return blocks
        return 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        start = self._start
        data = self.take_event(chunk)
        if data is not None:
            return [SSEEvent(None, data, start, self._offset)]
        events: list[SSEEvent] = []
        # A stream that may begin with a BOM takes the line-by-line path, which leaves the BOM out.
        if not self._within() and b"\r" not in chunk and not (self._offset == 0 and chunk[:1] == BOM[:1]):
            chunk = self._whole_events(chunk, events)  # the common case, without a regex per line
            if not chunk:
                return events
        if self._buf and b"\n" not in chunk and b"\r" not in chunk and self._buf[-1] != 13:
            # More of a long line: kept, not joined or searched again until its end comes.
            self._more.append(chunk)
            self._more_size += len(chunk)
            if len(self._buf) + self._more_size > MAX_LINE:
                self._skip(self._offset + len(self._buf) + self._more_size)
            return events
        if self._more:
            buf = b"".join([self._buf, *self._more, chunk])
            self._more, self._more_size = [], 0
        else:
            buf = self._buf + chunk if self._buf else chunk
        base = self._offset
        pos = 0
        if base == 0 and buf.startswith(BOM):
            pos = self._start = 3  # the first event starts after it: a comment put before the event too
        end = len(buf)
        while True:
            match = _EOL.search(buf, pos)
            if match is None or (match.end() == end and buf[-1] == 13):
                break  # no whole line left, or a trailing CR that may be the first half of CRLF
            if self._skip_line:
                self._skip_line = False
            elif match.start() - pos > MAX_LINE:
                self.oversized += 1
                self._skip_event = True
                self._data = []
            else:
                self._line(buf[pos : match.start()], base + match.end(), events)
            pos = match.end()
        # A trailing CR ends the line before it: it stays, so that an LF after it is taken as CRLF.
        cr = 0 if match is None else 1
        if self._skip_line or end - pos - cr > MAX_LINE:
            self._skip(base + end - cr)
            self._buf = buf[end - cr :]  # the CR, if any, ends the skipped line when it is read again
        else:
            self._buf = buf[pos:]
            self._offset = base + pos
        return events

    def _skip(self, offset: int) -> None:
        """Skip the rest of the unfinished line, too long to keep, up to `offset`, and its event."""
        if not self._skip_line:
            self.oversized += 1
        self._skip_line = self._skip_event = True
        self._data = []
        self._buf = b""
        self._more, self._more_size = [], 0
        self._offset = self.boundary = offset

    def _whole_events(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """Take the LF-framed events a chunk holds whole, when no line is pending; return the rest."""
        base = self._offset
        start = self._start  # where the block now beginning started (earlier, after an id: line)
        pos = 0
        while True:
            while chunk.startswith(b"\n", pos):  # blank lines: blocks with nothing to dispatch
                pos += 1
                start = base + pos
            cut = chunk.find(b"\n\n", pos)
            if cut < 0 or cut - pos > MAX_LINE:
                break  # the rest is not whole events, or has a line the line-by-line path may skip
            if chunk.startswith(b"data: ", pos) and chunk.find(b"\n", pos, cut) < 0:  # one data line
                events.append(SSEEvent(None, chunk[pos + 6 : cut], start, base + cut + 2))
                pos = cut + 2
                start = base + pos
                continue
            data: list[bytes] = []
            event: bytes | None = None
            for line in chunk[pos:cut].split(b"\n"):
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    event = value
            pos = cut + 2
            if data:
                events.append(SSEEvent(event, b"\n".join(data), start, base + pos))
            start = base + pos
        if pos:
            self._offset = self._start = self.boundary = base + pos
        return chunk[pos:]

    def finish(self) -> list[SSEEvent]:
        """Dispatch what is left when the stream ends without a final blank line; `unfinished` is then
        where that last block began (None: the stream ended at a block's end). An SSE client drops such
        a block: it is read here for what it tells, but nothing may follow it that would finish it."""
        events: list[SSEEvent] = []
        if self._more:
            self._buf = b"".join([self._buf, *self._more])
            self._more, self._more_size = [], 0
        if self._offset == 0 and self._buf.startswith(BOM):  # a first line never ended, cut inside its BOM
            self._buf = self._buf[len(BOM) :]
            self._offset = self._start = len(BOM)
        stream_end = self._offset + len(self._buf)
        if self._buf and not self._skip_line:
            self._line(self._buf.rstrip(b"\r"), stream_end, events)
        self._buf = b""
        self._offset = stream_end
        self.unfinished = self._start if self._start < stream_end else None
        self._line(b"", stream_end, events)
        return events

    def _line(self, line: bytes, line_end: int, events: list[SSEEvent]) -> None:
        if not line:
            if self._data and not self._skip_event:
                events.append(SSEEvent(self._event, b"\n".join(self._data), self._start, line_end))
            self._data = []
            self._event = None
            self._skip_event = False
            self._start = self.boundary = line_end
            return
        if line[0] == 58:  # ":" starts a comment line
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
