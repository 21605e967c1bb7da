"""HTTP/1.1 heads as the body guard and loadtest's client read them (rn_deploy/http1.py), against hand-written heads."""

from __future__ import annotations

import pytest

from rn_deploy.http1 import content_length, parse_head, status


def test_fields_are_lower_case_trimmed_and_repeated_ones_kept_in_order() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nset-cookie:b=2 \r\nX-Empty:\r\n\r\n"
    line, fields = parse_head(head)
    assert line == "HTTP/1.1 200 OK"
    assert fields == {"content-length": ["5"], "set-cookie": ["a=1", "b=2"], "x-empty": [""]}
    assert content_length(fields) == 5
    assert status(line) == (200, "OK")


@pytest.mark.parametrize("bad", [b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n",
                                 b"GET / HTTP/1.1\r\n: no name\r\n\r\n", b"GET / HTTP/1.1\r\nName : space\r\n\r\n"])
def test_a_line_that_is_not_a_header_field_is_refused_naming_it(bad: bytes) -> None:
    with pytest.raises(ValueError, match="malformed header line"):
        parse_head(bad)


def test_content_length_absent_agreeing_conflicting_or_not_a_number() -> None:
    assert content_length({}) is None
    assert content_length({"content-length": ["7", "7"]}) == 7  # the same value twice is one length (RFC 9110 8.6)
    for values in (["7", "8"], ["-1"], ["7 "], ["0x10"], [""]):
        with pytest.raises(ValueError, match="invalid Content-Length"):
            content_length({"content-length": values})


def test_status_lines() -> None:
    assert status("HTTP/1.0 503 Service Unavailable") == (503, "Service Unavailable")
    assert status("HTTP/1.1 204") == (204, "")
    for bad in ("", "SSH-2.0-OpenSSH_9.6", "HTTP/1.1 OK", "HTTP/1.1"):
        with pytest.raises(ValueError, match="not an HTTP answer"):
            status(bad)


@pytest.mark.parametrize("bad", [b"POST / HTTP/1.1\r\nX-A: a\nContent-Length: 99999999\r\n\r\n",
                                 b"POST / HTTP/1.1\nContent-Length: 99999999\r\n\r\n",
                                 b"POST / HTTP/1.1\r\nX-A: a\rContent-Length: 9\r\n\r\n",
                                 b"POST / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"])
def test_a_bare_lf_cr_or_nul_is_refused_where_another_parser_could_see_a_header_the_guard_did_not(bad: bytes) -> None:
    with pytest.raises(ValueError, match="bare CR, LF or NUL"):
        parse_head(bad)


def test_lenient_reads_answers_as_a_user_agent_must_unfolding_and_skipping_and_never_raises() -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Long: one\r\n  two\r\n\tthree\r\nServer : proxy\r\nnot a field\r\nContent-Length: 3\r\n\r\n"
    line, fields = parse_head(head, lenient=True)
    assert line == "HTTP/1.1 200 OK"
    assert fields == {"x-long": ["one two three"], "server": ["proxy"], "content-length": ["3"]}
    with pytest.raises(ValueError):
        parse_head(head)  # the guard takes none of it


def test_numbers_are_ascii_digits_and_a_status_has_three() -> None:
    with pytest.raises(ValueError, match="invalid Content-Length"):
        content_length({"content-length": ["\u00b9\u00b2"]})  # '¹²'.isdigit() is True
    for bad in ("HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 \u00b2\u00b2\u00b2 OK"):
        with pytest.raises(ValueError, match="not an HTTP answer"):
            status(bad)
