"""Line splitting of the log ingester and what the agent reads from a task's output."""

from __future__ import annotations

from cnetd.logs.ingester import CUT_MARKER, MAX_LINE_BYTES, split_chunk
from cnetd.logs.output import last_json_object, progress_from_line


def test_complete_lines_are_taken_and_a_partial_one_waits() -> None:
    lines, consumed, skipping = split_chunk(b"a\nb\r\npartial", final=False, skipping=False)
    assert (lines, consumed, skipping) == (["a", "b"], 5, False)


def test_the_partial_last_line_is_flushed_at_the_end() -> None:
    assert split_chunk(b"a\nlast", final=True, skipping=False) == (["a", "last"], 6, False)


def test_invalid_utf8_is_replaced_and_chinese_kept() -> None:
    lines, _, _ = split_chunk("训练完成\n".encode() + b"\xff\n", final=False, skipping=False)
    assert lines == ["训练完成", "\ufffd"]


def test_an_overlong_line_is_cut_not_fatal() -> None:
    long = b"x" * (MAX_LINE_BYTES + 10)
    lines, consumed, skipping = split_chunk(long + b"\nnext\n", final=False, skipping=False)
    assert lines == ["x" * MAX_LINE_BYTES + CUT_MARKER, "next"]
    assert consumed == len(long) + 6 and not skipping


def test_an_overlong_line_without_newline_is_cut_and_its_rest_skipped() -> None:
    lines, consumed, skipping = split_chunk(b"y" * (MAX_LINE_BYTES + 5), final=False, skipping=False)
    assert lines == ["y" * MAX_LINE_BYTES + CUT_MARKER] and skipping
    lines, consumed, skipping = split_chunk(b"yyy\nafter\n", final=False, skipping=True)
    assert lines == ["after"] and not skipping and consumed == 10


def test_result_is_the_last_json_object_even_across_lines() -> None:
    text = 'Epoch 1\n{"progress": 1.0}\n中文输出 {\n  "status": "success",\n  "nested": {"a": [1, 2]}\n}\ntrailing noise\n'
    assert last_json_object(text) == {"status": "success", "nested": {"a": [1, 2]}}
    assert last_json_object('{"a": {"x": 1}, "b": {"y": 2}}') == {"a": {"x": 1}, "b": {"y": 2}}
    assert last_json_object("no json here [1, 2]") is None
    assert last_json_object('{"ok": 1} {"broken": ') == {"ok": 1}


def test_progress_lines() -> None:
    assert progress_from_line('{"progress": 0.25, "epoch": 5}') == 0.25
    assert progress_from_line('{"progress": 3}') == 1.0
    assert progress_from_line('{"progress": "half"}') is None
    assert progress_from_line('{"progress": true}') is None
    assert progress_from_line("progress: 0.5") is None


def test_a_result_with_a_lone_surrogate_escape_is_text() -> None:
    """A task's own output can hold JSON's "\\ud800": the result keeps the object, with U+FFFD
    where a lone surrogate was (as for bytes that are not UTF-8), and a valid pair as it is."""
    text = '{"a": "x\\ud800", "\\udfff": ["\\ud83d\\ude00", 1]}'
    assert last_json_object(text) == {"a": "x\ufffd", "\ufffd": ["\U0001F600", 1]}
