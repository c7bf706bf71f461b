"""Request heads checked against RFC 9112 and RFC 9110 before anything acts on them.

A request whose framing two parsers could read two ways (a proxy and this
server) is how requests are smuggled: each check raises `Refused` with the
status the RFC gives, what was wrong, the offending value and what to send
instead. Pure: no sockets, a few microseconds per request head.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_FIELD_LINE = 65536  # bytes in one field line (as http.client)
MAX_HEAD_LINES = 100  # field lines plus the empty line that ends them (as http.client)
MAX_LENGTH_DIGITS = 18  # a Content-Length past this is no body anyone takes

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # RFC 9110 §5.6.2
# A field line as RFC 9112 §5 has it: name ":" OWS value OWS CRLF, the value
# made of HTAB, SP, VCHAR and obs-text only (no CR, LF, NUL or other CTL).
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t\x20-\x7e\x80-\xff]*)\r\n")
_NAME = re.compile(_TOKEN)
_REQUEST_LINE = re.compile(
    r"(" + _TOKEN.decode() + r") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])\r\n"
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# RFC 9110 §7.2 / RFC 3986 §3.2.2: IP-literal, or reg-name / IPv4, then a port.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
_FRAMING = frozenset((b"host", b"content-length", b"transfer-encoding"))
_REASONS = {400: "Bad Request", 413: "Content Too Large", 431: "Request Header "
            "Fields Too Large", 501: "Not Implemented", 505: "HTTP Version Not "
            "Supported"}  # fmt: skip


class Refused(Exception):
    """A request head this server must not act on: answer `status` and close."""

    def __init__(self, status: int, error: str, detail: str, kind: str = "framing"):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.kind = kind  # the /stats "cut" counter it counts under

    @property
    def status_line(self) -> str:
        """``"400 Bad Request"``: the status and its reason phrase."""
        return f"{self.status} {_REASONS[self.status]}"


def _bad(detail: str) -> Refused:
    return Refused(400, "bad request", detail)


def _show(value: bytes | str, limit: int = 60) -> str:
    """The offending value, quoted and cut short (it goes in a log and a reply)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def check_request_line(line: str) -> tuple[int, int]:
    """The (major, minor) version of a request line that parses (RFC 9112 §3).

    Raises `Refused`: 400 for a line that does not parse (one space between
    method, target and version; no bare LF; no HTTP/0.9 form), 505 for a
    version other than HTTP/1.x.
    """
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise _request_line_problem(line)
    method, target, major, minor = match.groups()
    if target[0] != "/" and not (
        target == "*" or method == "CONNECT" or _SCHEME.match(target)
    ):
        raise _bad(
            f"request target {_show(target)} is none of RFC 9112 §3.2's forms; "
            "send a path that starts with '/'"
        )
    if major != "1":
        raise Refused(
            505, "http version not supported",
            f"HTTP/{major}.{minor} in the request line; send HTTP/1.1",
        )  # fmt: skip
    return 1, int(minor)


def _request_line_problem(line: str) -> Refused:
    if not line.endswith("\r\n"):
        end = "a bare LF" if line.endswith("\n") else "no line end"
        return _bad(f"the request line {_show(line)} ends in {end}; send it ended "
                    "by CRLF")  # fmt: skip
    words = line[:-2].split(" ")
    if len(words) != 3 or not all(words):
        return _bad(
            f"the request line {_show(line[:-2])} does not parse (RFC 9112 §3); send "
            "METHOD SP TARGET SP HTTP/1.1, one space between each"
        )
    method, target, version = words
    if not _NAME.fullmatch(method.encode("latin-1")):
        return _bad(f"method {_show(method)} is not a token (RFC 9110 §9); send GET "
                    "or POST")  # fmt: skip
    if not re.fullmatch(r"HTTP/[0-9]\.[0-9]", version):
        return _bad(f"version {_show(version)} does not parse (RFC 9112 §2.3); send "
                    "HTTP/1.1")  # fmt: skip
    return _bad(f"request target {_show(target)} holds a control character; "
                "send it percent-encoded")  # fmt: skip


def read_head(readline: Callable[[int], bytes]) -> list[bytes]:
    """The field lines of a request head and the empty line that ends it.

    Raises `Refused` 431 past MAX_HEAD_LINES lines or MAX_FIELD_LINE bytes in
    one line, as http.client's limits do.
    """
    lines = []
    while True:
        line = readline(MAX_FIELD_LINE + 1)
        if len(line) > MAX_FIELD_LINE:
            raise Refused(
                431, "request header fields too large",
                f"a header line over {MAX_FIELD_LINE} bytes ({_show(line, 30)}); "
                "send shorter fields", "headers",
            )  # fmt: skip
        lines.append(line)
        if len(lines) > MAX_HEAD_LINES:
            raise Refused(
                431, "request header fields too large",
                f"at most {MAX_HEAD_LINES} header lines are read; send fewer fields",
                "headers",
            )  # fmt: skip
        if line in (b"\r\n", b"\n", b""):
            return lines


def check_fields(version: tuple[int, int], lines: list[bytes]) -> list[tuple[str, str]]:
    """A request head's fields (from `read_head`) as (name, value); or `Refused`.

    Each name and value as sent (latin-1), the value without the whitespace
    after the colon, as `email.parser` gives them for a head that passes.

    Field syntax (RFC 9112 §5, RFC 9110 §5.5): a token name, its colon right
    after it, no CR, LF, NUL or other control in a value, no obs-fold, CRLF
    line ends. Then the framing (RFC 9112 §3.2, §6): Host, Content-Length and
    Transfer-Encoding, each the one way a request can be read.
    """
    if lines[-1] != b"\r\n":
        raise _field_problem(lines[-1])
    framing: dict[bytes, list[bytes]] = {}
    fields = []
    for line in lines[:-1]:
        match = _FIELD.fullmatch(line)
        if match is None:
            raise _field_problem(line)
        name, value = match.groups()
        fields.append((name.decode("latin-1"), value.decode("latin-1")))
        lower = name.lower()
        if lower in _FRAMING:
            framing.setdefault(lower, []).append(value.rstrip(b" \t"))
    if version >= (1, 1) or b"host" in framing:
        _check_host(framing.get(b"host", []))
    if framing:
        _check_length(
            version,
            framing.get(b"content-length"),
            framing.get(b"transfer-encoding"),
        )
    return fields


def _field_problem(line: bytes) -> Refused:
    if line == b"":
        return _bad("the request head ended before its empty line; send the whole "
                    "head, ended by CRLF CRLF")  # fmt: skip
    if not line.endswith(b"\r\n"):
        return _bad(f"the header line {_show(line)} ends in a bare LF; send each "
                    "line ended by CRLF")  # fmt: skip
    if line[:1] in (b" ", b"\t"):
        return _bad(
            f"the header line {_show(line[:-2])} starts with whitespace: a field "
            "folded onto the line before (obs-fold, RFC 9112 §5.2); send each "
            "field on one line"
        )
    name, colon, value = line[:-2].partition(b":")
    if not colon:
        return _bad(f"the header line {_show(line[:-2])} has no colon; send "
                    "Name: value")  # fmt: skip
    if name != name.rstrip(b" \t") and _NAME.fullmatch(name.rstrip(b" \t")):
        return _bad(
            f"whitespace between the field name {_show(name.rstrip())} and its "
            "colon (RFC 9112 §5.1); send the colon right after the name"
        )
    if not _NAME.fullmatch(name):
        return _bad(f"field name {_show(name)} is not a token (RFC 9110 §5.1); send "
                    "letters, digits and !#$%&'*+-.^_`|~ only")  # fmt: skip
    bad = next(c for c in value if c < 0x20 and c != 0x09 or c == 0x7F)
    what = {0x0D: "a CR", 0x0A: "an LF", 0x00: "a NUL"}.get(bad, f"control 0x{bad:02x}")
    shown = _show(value.strip(b" \t"))
    return _bad(
        f"the value of {name.decode('latin-1')} holds {what} ({shown}); field "
        "values may not hold CR, LF, NUL or other controls (RFC 9110 §5.5); send "
        "visible characters, spaces and tabs only"
    )


def _check_host(hosts: list[bytes]) -> None:
    # RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, with more than
    # one Host line, or with an invalid Host value.
    if len(hosts) != 1:
        if not hosts:
            raise _bad("an HTTP/1.1 request without Host (RFC 9112 §3.2); send "
                       "Host: the name and port you connected to")  # fmt: skip
        shown = ", ".join(map(_show, hosts))
        raise _bad(f"{len(hosts)} Host fields ({shown}); send exactly one")
    if not _HOST.fullmatch(hosts[0]):
        raise _bad(f"Host {_show(hosts[0])} is not host[:port] (RFC 9110 §7.2); "
                   "send the name and port you connected to")  # fmt: skip


def _check_length(
    version: tuple[int, int], lengths: list[bytes] | None, codings: list[bytes] | None
) -> None:
    if codings is not None:
        _check_codings(version, codings)
        if lengths is not None:
            # RFC 9112 §6.1 allows reading by Transfer-Encoding alone, but a proxy
            # in front may have used the length: refuse rather than guess.
            raise _bad(
                f"both Transfer-Encoding ({_show(b', '.join(codings))}) and "
                f"Content-Length ({_show(b', '.join(lengths))}): a proxy may have "
                "framed the body by the other one (RFC 9112 §6.1); send one of them"
            )
        return
    if lengths is None:
        return
    if len(lengths) > 1:
        shown = ", ".join(map(_show, lengths))
        raise _bad(f"{len(lengths)} Content-Length fields ({shown}); send exactly "
                   "one (RFC 9112 §6.3)")  # fmt: skip
    length = lengths[0]
    if not length.isdigit():  # bytes.isdigit: ASCII digits only
        if b"," in length:
            why = "a list of lengths"
        elif length[:1] in (b"+", b"-"):
            why = "a sign"
        else:
            why = "not a decimal number"
        raise _bad(f"Content-Length {_show(length)} is {why} (RFC 9110 §8.6); send "
                   "the body's size in bytes as digits only")  # fmt: skip
    if len(length) > MAX_LENGTH_DIGITS:
        raise Refused(413, "content too large",
                      f"Content-Length {_show(length)} is more than any body this "
                      "server takes; send a smaller body")  # fmt: skip


def _check_codings(version: tuple[int, int], fields: list[bytes]) -> None:
    shown = _show(b", ".join(fields))
    if version < (1, 1):
        raise _bad(
            f"Transfer-Encoding {shown} in an HTTP/1.0 request: its framing is "
            "faulty (RFC 9112 §6.1); send HTTP/1.1, or Content-Length"
        )
    if len(fields) == 1 and fields[0].lower() == b"chunked":
        return
    codings = [c.strip(b" \t").lower() for f in fields for c in f.split(b",")]
    if codings.count(b"chunked") > 1:
        raise _bad(f"Transfer-Encoding {shown} applies chunked more than once "
                   "(RFC 9112 §7); send Transfer-Encoding: chunked")  # fmt: skip
    if codings[-1] != b"chunked":
        raise _bad(
            f"Transfer-Encoding {shown}: chunked is not the final coding, so the "
            "body's length cannot be known (RFC 9112 §6.3); send "
            "Transfer-Encoding: chunked, or Content-Length"
        )
    others = [c for c in codings[:-1] if c]
    if others:
        raise Refused(
            501, "not implemented",
            f"transfer coding {_show(others[0])} (in Transfer-Encoding {shown}) is "
            "not implemented here (RFC 9112 §6.1); send Transfer-Encoding: chunked "
            "alone",
        )  # fmt: skip
    raise _bad(f"Transfer-Encoding {shown} is not one plain 'chunked'; send "
               "Transfer-Encoding: chunked in one field")  # fmt: skip
