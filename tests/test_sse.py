from pathlib import Path
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import sse
from proxy.sse import SSEEvent, SSEScanner

LIMIT = 64  # sse.MAX_LINE, lowered where a test needs lines longer than the scanner reads

FIXTURES = Path(__file__).parent / "fixtures"
STREAM = (FIXTURES / "openai_chat_stream.sse").read_bytes()


def scan(pieces: list[bytes]) -> list[SSEEvent]:
    scanner = SSEScanner()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(scanner.feed(piece))
    events.extend(scanner.finish())
    return events


def test_recorded_stream_gives_one_event_per_data_line() -> None:
    events = scan([STREAM])
    data_lines = [line[6:] for line in STREAM.split(b"\n") if line.startswith(b"data: ")]
    assert [event.data for event in events] == data_lines
    assert len(events) == 11
    assert events[-1].data == b"[DONE]"
    assert events[-1].end == len(STREAM)


def test_split_at_every_byte_offset_gives_the_same_events() -> None:
    whole = scan([STREAM])
    for cut in range(len(STREAM) + 1):
        assert scan([STREAM[:cut], STREAM[cut:]]) == whole, cut


def test_split_at_every_pair_of_offsets_with_crlf_gives_the_same_events() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")[:700]
    whole = scan([crlf])
    for first in range(0, len(crlf), 7):
        for second in range(first, len(crlf), 13):
            assert scan([crlf[:first], crlf[first:second], crlf[second:]]) == whole


def test_event_spans_cover_exact_bytes() -> None:
    events = scan([STREAM[:100], STREAM[100:2000], STREAM[2000:]])
    rebuilt = b"".join(STREAM[event.start : event.end] for event in events)
    assert rebuilt == STREAM


def test_crlf_and_cr_line_endings() -> None:
    events = scan([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"])
    assert [event.data for event in events] == [b"a", b"b", b"c"]


def test_cr_at_end_of_a_read_waits_for_a_possible_lf() -> None:
    scanner = SSEScanner()
    assert scanner.feed(b"data: a\r\n\r") == []
    assert [event.data for event in scanner.feed(b"\ndata: b\r\n\r\n")] == [b"a", b"b"]


def test_comments_are_skipped_and_move_the_boundary() -> None:
    scanner = SSEScanner()
    assert scanner.feed(b": keep-alive\n\n") == []
    assert scanner.boundary == 14
    assert [event.data for event in scanner.feed(b"data: x\n\n")] == [b"x"]


def test_multi_line_data_is_joined_with_newlines_and_event_type_kept() -> None:
    events = scan([b'event: error\ndata: {"a":\ndata: 1}\nid: 7\n\n'])
    assert events == [SSEEvent(b"error", b'{"a":\n1}', 0, 41)]


def test_field_without_space_and_without_value() -> None:
    assert [event.data for event in scan([b"data:x\n\ndata\n\n"])] == [b"x", b""]


def test_missing_final_blank_line_and_missing_done() -> None:
    assert [event.data for event in scan([b"data: a\n\ndata: b"])] == [b"a", b"b"]
    assert [event.data for event in scan([b"data: a\n\ndata: b\n"])] == [b"a", b"b"]


def test_boundary_stays_before_an_unfinished_event() -> None:
    scanner = SSEScanner()
    scanner.feed(b'data: a\n\ndata: {"usage"')
    assert scanner.boundary == 9


def test_an_oversized_line_is_not_kept_and_the_next_event_is_found() -> None:
    scanner = SSEScanner()
    huge = b"data: " + b"x" * (LIMIT + 10)
    events = []
    with mock.patch.object(sse, "MAX_LINE", LIMIT):
        for start in range(0, len(huge), 7):
            events += scanner.feed(huge[start : start + 7])
            assert len(scanner._buf) + scanner._more_size <= LIMIT + 7
        events += scanner.feed(b"\n\ndata: after\n\n")
    assert [event.data for event in events] == [b"after"]
    assert scanner.oversized == 1
    assert scanner.boundary == len(huge) + 15


def test_a_line_at_the_limit_is_read_however_it_is_cut() -> None:
    line = b"data: " + b"x" * (LIMIT - 6)
    stream = line + b"\n\n"
    with mock.patch.object(sse, "MAX_LINE", LIMIT):
        for size in (1, 5, len(line), len(stream)):
            events = scan([stream[i : i + size] for i in range(0, len(stream), size)])
            assert [event.data for event in events] == [line[6:]], size


def test_a_cr_ending_a_read_after_an_oversized_line_still_ends_that_line_only() -> None:
    """CR-only framing, a read ending right after the CR that closes a line too long to read: the next
    read's CR is the blank line that ends the event, so the event after it is read."""
    stream = b"data: " + b"x" * (LIMIT + 10) + b"\r" + b"\rdata: usage\r\rdata: [DONE]\r\r"
    cut = LIMIT + 17
    with mock.patch.object(sse, "MAX_LINE", LIMIT):
        whole, split = scan([stream]), scan([stream[:cut], stream[cut:]])
    assert [event.data for event in whole] == [event.data for event in split] == [b"usage", b"[DONE]"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2 * LIMIT), st.sampled_from([b"\n", b"\r\n", b"\r"])), min_size=1, max_size=6
    ),
    st.lists(st.integers(1, 2000), max_size=12),
)
def test_whether_a_long_line_is_read_does_not_depend_on_the_reads(
    lines: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """Events of one data line each, some longer than the scanner reads: the same events are read, and
    the same are counted as too long, whether the stream comes in one read or in any pieces."""
    stream = b"".join(b"data: %d" % index + b"x" * size + nl + nl for index, (size, nl) in enumerate(lines))
    bounds = [0, *sorted(cut for cut in cuts if cut < len(stream)), len(stream)]
    pieces = [stream[start:end] for start, end in zip(bounds, bounds[1:], strict=False) if end > start]

    def read(parts: list[bytes]) -> tuple[list[bytes], int]:
        scanner = SSEScanner()
        events = [event.data for part in parts for event in scanner.feed(part)] + [
            event.data for event in scanner.finish()
        ]
        return events, scanner.oversized

    with mock.patch.object(sse, "MAX_LINE", LIMIT):
        whole = read([stream])
        assert read(pieces) == whole
    too_long = [index for index, (size, _) in enumerate(lines) if len(b"data: %d" % index) + size > LIMIT]
    read_whole = [b"%d" % i + b"x" * size for i, (size, _) in enumerate(lines) if i not in too_long]
    assert whole == (read_whole, len(too_long))


def test_multibyte_character_split_across_reads() -> None:
    text = 'data: {"content":"Paris ist schön 🇫🇷"}\n\n'.encode()
    whole = scan([text])
    for cut in range(len(text)):
        assert scan([text[:cut], text[cut:]]) == whole


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(cuts)
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert scan(pieces) == scan([STREAM])


LINES = [b'data: {"a":1}', b"data:x", b"data", b"event: error", b"id: 7", b": keep-alive", b"", b"retry: 10"]


@given(st.lists(st.sampled_from(LINES), max_size=30), st.sampled_from([b"\n", b"\r\n"]))
def test_whole_chunks_and_single_bytes_agree(lines: list[bytes], newline: bytes) -> None:
    # A whole chunk takes the fast path for LF-framed events; single bytes take the line-by-line path.
    stream = b"".join(line + newline for line in lines)
    assert scan([stream]) == scan([stream[i : i + 1] for i in range(len(stream))])


BLOCKS = [b'data: {"a":1}\n\n', b"data: \n\n", b"data: [DONE]\n\n", b"data: a\ndata: b\n\n", b"id: 7\n"]
BLOCKS += [b": keep-alive\n\n", b"event: error\n", b"data:x\n\n", b"\n", b'data: {"b":2}\n']


@given(st.lists(st.sampled_from(BLOCKS), max_size=30))
def test_one_read_per_event_and_single_bytes_agree(blocks: list[bytes]) -> None:
    # A read holding exactly one one-line `data: ` event (how OpenAI-style servers flush) takes the
    # quickest path; it must give the events, spans included, of the line-by-line path.
    stream = b"".join(blocks)
    assert scan(blocks) == scan([stream[i : i + 1] for i in range(len(stream))])


@settings(max_examples=500)
@given(
    st.lists(st.sampled_from(BLOCKS), max_size=30),
    st.sampled_from(BLOCKS),
    st.integers(0, 30),
    st.sampled_from([0, 0, 0, 1, 2]),
)
def test_events_taken_unread_are_the_events_feed_would_give(
    blocks: list[bytes], before: bytes, taken_blocks: int, short: int
) -> None:
    # take_events() counts a run of events without cutting them out; it must take what feed() would
    # (as many events, the scanner left in the same state) or take nothing.
    run = b"".join(blocks)
    end = max(len(b"".join(blocks[:taken_blocks])) - short, 0)
    fed, taken = SSEScanner(), SSEScanner()
    fed.feed(before)
    taken.feed(before)
    events = fed.feed(run[:end])
    count = taken.take_events(run, 0, end)
    if count:
        assert count == len(events) and {event.event for event in events} == {None}
        assert taken.boundary == fed.boundary == len(before) + end
    else:
        assert taken.feed(run[:end]) == events  # nothing was taken: the same bytes give the same events
    rest = run[end:] + b"data: last\n\n"
    assert taken.feed(rest) == fed.feed(rest)


def test_a_run_of_one_line_data_events_is_taken_whole_or_not_at_all() -> None:
    one = b'data: {"a":1}\n\n'
    scanner = SSEScanner()
    assert scanner.take_events(one * 3, 0, 3 * len(one)) == 3 and scanner.boundary == 3 * len(one)
    assert scanner.take_events(b"xx" + one * 2, 2, 2 + 2 * len(one)) == 2
    for other in (b": keep-alive\n\n", b"data: a\ndata: b\n\n", b"data: a\r\n\r\n", b"\n\n", b"event: e\n"):
        assert scanner.take_events(one + other + one, 0, 2 * len(one) + len(other)) == 0
    assert scanner.take_events(one * 2, 0, len(one) + 3) == 0  # ends inside an event
    assert scanner.boundary == 5 * len(one)


def test_a_bom_at_the_stream_s_start_is_not_part_of_its_first_line_however_it_is_cut() -> None:
    stream = sse.BOM + b'data: {"a":1}\n\ndata: b\n\n'
    for cut in range(len(stream) + 1):
        events = scan([stream[:cut], stream[cut:]])
        assert [event.data for event in events] == [b'{"a":1}', b"b"], cut
        # The first event starts after the BOM: what goes before it (a cost comment) leaves the BOM first.
        assert events[0].start == len(sse.BOM), cut
    assert [event.data for event in scan([b"data: a\n\n" + sse.BOM + b"data: b\n\n"])] == [b"a"]


def test_a_bom_cut_across_reads_is_left_out_of_a_first_line_that_never_ends() -> None:
    stream = sse.BOM + b'data: {"a":1}'  # one event, the stream ending before its line's end
    event = SSEEvent(None, b'{"a":1}', len(sse.BOM), len(stream))
    for cut in range(len(stream) + 1):
        assert scan([stream[:cut], stream[cut:]]) == [event], cut


def test_finish_says_where_the_block_the_stream_ended_inside_began_however_it_is_cut() -> None:
    cases = [
        (b"data: a\n\ndata: b", 9),
        (b"data: a\n\ndata: b\n", 9),
        (b"data: a\n\nid: 7\n: keep-alive\n", 9),
        (b"data: a\r\n\r\ndata: b\r\n", 11),
        (sse.BOM + b"data: a", len(sse.BOM)),  # the block begins after the BOM
        (b"data: a\n\n", None),
        (b"data: a\r\r", None),  # a CR at the end is a line's end: no LF can come after it
        (b"", None),
    ]
    for stream, unfinished in cases:
        for cut in range(len(stream) + 1):
            scanner = SSEScanner()
            for piece in (stream[:cut], stream[cut:]):
                if piece:
                    scanner.feed(piece)
            scanner.finish()
            assert scanner.unfinished == unfinished, (stream, cut)
