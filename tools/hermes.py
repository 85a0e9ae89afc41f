"""Incremental parser for Hermes-style JSON tool calls (Qwen2.5 / Qwen3 templates).

    <tool_call>\\n{"name": "NAME", "arguments": {...}}\\n</tool_call>

When the call's JSON begins `{"name": "...", "arguments": {` (the order the templates teach), the
call starts there and the arguments object streams as the model writes it: each fragment is cut
where the text so far is a valid JSON prefix that closing brackets (and a closing quote) complete,
so a call cut off by a malformed character or the end of generation is still closed into one valid
object. Any other shape is parsed whole once its JSON value ends. JSON that is malformed before the
call started, and calls of undeclared functions (see qwen_xml.py for why), are content text.
Several JSON objects in one `<tool_call>` are separate calls.
"""

from __future__ import annotations

import enum
import json
import re

from tools.events import find_marker, marker_at
from tools.step_parser import StepParser

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

# The call's text up to and including the `{` that opens its arguments, in the usual key order.
_STREAMABLE_HEAD = re.compile(
    r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*\{'
)
_STRING_RUN = re.compile(r'[^"\\\x00-\x1f]+')
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_WHITESPACE = frozenset(" \t\n\r")
_LITERAL_RESTS = {"t": "rue", "f": "alse", "n": "ull"}


class _Mode(enum.Enum):
    VALUE = enum.auto()  # a value must come next
    VALUE_OR_CLOSE = enum.auto()  # after [
    KEY_OR_CLOSE = enum.auto()  # after {
    KEY = enum.auto()  # after , in an object
    COLON = enum.auto()
    AFTER_VALUE = enum.auto()  # a , or the container's closing bracket
    STRING = enum.auto()
    KEY_STRING = enum.auto()
    NUMBER = enum.auto()
    LITERAL = enum.auto()
    DONE = enum.auto()
    FAILED = enum.auto()


_BRACKET_MAY_CLOSE = (_Mode.AFTER_VALUE, _Mode.KEY_OR_CLOSE, _Mode.VALUE_OR_CLOSE)


class JsonScanner:
    """Checks one JSON value as it arrives and knows, at each point, whether the text so far can
    be completed by closing what is open (`closable`) and with what (`closing`)."""

    def __init__(self) -> None:
        self.closers: list[str] = []
        self.mode = _Mode.VALUE
        self._token = ""  # the number so far, or the rest of a literal
        self._escape = False
        self._hex_left = 0

    @property
    def closable(self) -> bool:
        if self.mode in _BRACKET_MAY_CLOSE or self.mode is _Mode.DONE:
            return True
        if self.mode is _Mode.STRING:
            return not self._escape and not self._hex_left
        return self.mode is _Mode.NUMBER and _NUMBER.fullmatch(self._token) is not None

    def closing(self, depth: int) -> str:
        """What closes the value at nesting `depth` (0 = the whole value) from a closable point."""
        quote = '"' if self.mode is _Mode.STRING else ""
        return quote + "".join(reversed(self.closers[depth:]))

    def step(self, text: str, pos: int) -> int:
        """Consume text[pos] (or a run of plain string characters from it) and return the next
        position. A number ends at the character after it, which is left for the next step."""
        ch = text[pos]
        mode = self.mode
        if mode in (_Mode.STRING, _Mode.KEY_STRING):
            return self._string_step(text, pos)
        if mode is _Mode.NUMBER:
            if ch in _NUMBER_CHARS:
                self._token += ch
            elif _NUMBER.fullmatch(self._token):
                self._value_done()
                return pos
            else:
                self.mode = _Mode.FAILED
            return pos + 1
        if mode is _Mode.LITERAL:
            if ch == self._token[0]:
                self._token = self._token[1:]
                if not self._token:
                    self._value_done()
            else:
                self.mode = _Mode.FAILED
            return pos + 1
        if ch in _WHITESPACE:
            return pos + 1
        if mode is _Mode.VALUE or (mode is _Mode.VALUE_OR_CLOSE and ch != "]"):
            self._start_value(ch)
        elif mode in (_Mode.KEY_OR_CLOSE, _Mode.KEY) and ch == '"':
            self.mode = _Mode.KEY_STRING
        elif mode is _Mode.COLON and ch == ":":
            self.mode = _Mode.VALUE
        elif mode is _Mode.AFTER_VALUE and ch == ",":
            self.mode = _Mode.KEY if self.closers[-1] == "}" else _Mode.VALUE
        elif mode in _BRACKET_MAY_CLOSE and ch == self.closers[-1]:
            self.closers.pop()
            self._value_done()
        else:
            self.mode = _Mode.FAILED
        return pos + 1

    def _start_value(self, ch: str) -> None:
        if ch in "{[":
            self.closers.append("}" if ch == "{" else "]")
            self.mode = _Mode.KEY_OR_CLOSE if ch == "{" else _Mode.VALUE_OR_CLOSE
        elif ch == '"':
            self.mode = _Mode.STRING
        elif ch == "-" or ch.isascii() and ch.isdigit():
            self.mode, self._token = _Mode.NUMBER, ch
        elif ch in _LITERAL_RESTS:
            self.mode, self._token = _Mode.LITERAL, _LITERAL_RESTS[ch]
        else:
            self.mode = _Mode.FAILED

    def _string_step(self, text: str, pos: int) -> int:
        ch = text[pos]
        if self._escape:
            self._escape = False
            if ch == "u":
                self._hex_left = 4
            elif ch not in '"\\/bfnrt':
                self.mode = _Mode.FAILED
        elif self._hex_left:
            self._hex_left -= 1
            if ch not in _HEX_DIGITS:
                self.mode = _Mode.FAILED
        elif ch == '"':
            if self.mode is _Mode.KEY_STRING:
                self.mode = _Mode.COLON
            else:
                self._value_done()
        elif ch == "\\":
            self._escape = True
        elif ch < " ":
            self.mode = _Mode.FAILED
        else:
            return _STRING_RUN.match(text, pos).end()
        return pos + 1

    def _value_done(self) -> None:
        self.mode = _Mode.AFTER_VALUE if self.closers else _Mode.DONE


class _State(enum.Enum):
    TEXT = enum.auto()
    BODY = enum.auto()  # inside a call's JSON value
    AFTER_BODY = enum.auto()  # after it: </tool_call> or another call's JSON


class HermesParser(StepParser):
    """feed() decoded text pieces as they are generated, then finish() once; both return events.

    In BODY, `_buf` holds the call's text after `<tool_call>`; once streaming, the unsent rest.
    """

    def __init__(self, tools: list[dict] | None) -> None:
        steps = {
            _State.TEXT: self._text,
            _State.BODY: self._body,
            _State.AFTER_BODY: self._after_body,
        }
        super().__init__(tools, _State.TEXT, steps)
        self._scanner = JsonScanner()
        self._scanned = 0  # buffered text checked by the scanner
        self._head_checked = False
        self._streaming = False  # the call started and its arguments are being sent
        self._closable_at = 0  # the arguments can be sent up to here and closed there...
        self._closing = ""  # ...by this text

    def _text(self, at_end: bool) -> bool:
        pos, marker = find_marker(self._buf, (TOOL_CALL_OPEN,), at_end)
        self._sink.text(self._buf[:pos])
        self._buf = self._buf[pos + len(marker or "") :]
        if marker:
            self._begin_body()
        return marker is not None

    def _after_body(self, at_end: bool) -> bool:
        self._buf = self._buf.lstrip()
        marker = marker_at(self._buf, 0, (TOOL_CALL_CLOSE,), at_end)
        if marker is None:
            return False
        if marker:
            self._buf = self._buf[len(marker) :]
            self._sink.drop_whitespace()
            self._state = _State.TEXT
        elif self._buf.startswith("{"):
            self._begin_body()
        else:
            self._state = _State.TEXT
        return True

    def _cut_off(self) -> None:
        if self._state is _State.BODY and self._streaming:
            self._sink.args(self._closing)
            self._sink.end_call()
        self._buf = ""
        self._state = _State.TEXT

    def _begin_body(self) -> None:
        self._state = _State.BODY
        self._scanner = JsonScanner()
        self._scanned = 0
        self._head_checked = self._streaming = False
        self._closable_at = 0
        self._closing = ""

    def _body(self, at_end: bool) -> bool:
        scanner = self._scanner
        while self._scanned < len(self._buf) and scanner.mode not in (_Mode.DONE, _Mode.FAILED):
            self._scanned = scanner.step(self._buf, self._scanned)
            if not self._head_checked and len(scanner.closers) == 2:
                self._check_head()
            if self._streaming and scanner.mode is not _Mode.FAILED:
                self._note_closable()
        if self._streaming:
            self._sink.args(self._buf[: self._closable_at])
            self._buf = self._buf[self._closable_at :]
            self._scanned -= self._closable_at
            self._closable_at = 0
        if scanner.mode is _Mode.DONE:
            self._complete_call()
        elif scanner.mode is _Mode.FAILED or at_end:
            self._abandon_call()
        else:
            return False
        return True

    def _check_head(self) -> None:
        """The arguments object just opened: start the call if the text before is the usual head."""
        self._head_checked = True
        head = _STREAMABLE_HEAD.fullmatch(self._buf, 0, self._scanned)
        if head is None:
            return
        name = json.loads(head.group(1))
        if self._schemas.knows(name):
            self._sink.start_call(name)
            self._streaming = True
            self._buf = self._buf[self._scanned - 1 :]  # from the arguments' "{"
            self._scanned = 1

    def _note_closable(self) -> None:
        depth = len(self._scanner.closers)
        if depth >= 2 and self._scanner.closable:
            self._closable_at, self._closing = self._scanned, self._scanner.closing(1)
        elif depth < 2 and self._closing:  # the arguments object just closed
            self._closable_at, self._closing = self._scanned, ""

    def _complete_call(self) -> None:
        body, self._buf = self._buf[: self._scanned], self._buf[self._scanned :]
        self._state = _State.AFTER_BODY
        if self._streaming:
            self._sink.end_call()
            return
        call = _parse_call(body)
        if call is None or not self._schemas.knows(call[0]):
            self._sink.text(TOOL_CALL_OPEN + body)
            self._state = _State.TEXT
            return
        self._sink.start_call(call[0])
        self._sink.args(call[1])
        self._sink.end_call()

    def _abandon_call(self) -> None:
        """Malformed JSON, or generation ended inside it: close a started call; the text not sent
        as arguments is content."""
        if self._streaming:
            self._sink.args(self._closing)
            self._sink.end_call()
        else:
            self._sink.text(TOOL_CALL_OPEN)
        self._state = _State.TEXT


def _parse_call(body: str) -> tuple[str, str] | None:
    """(name, arguments as JSON object text) of a complete call, or None if it is not one."""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # some models send the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return call["name"], json.dumps(arguments, ensure_ascii=False)
