"""Incremental parser for Qwen3.5's XML tool calls (the Qwen3-Coder format).

    <tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n
    </function>\\n</tool_call>          (the <parameter=...> part once per argument)

The chat template writes one newline after `<parameter=ARG>` and one before `</parameter>`; they
belong to the format and are removed from the value, nothing else is. A call starts as soon as
`<function=NAME>` closes. String values (and values of no known type) stream into the arguments
as escaped JSON while they are generated; other values are parsed as JSON when they close.

Robustness, because real models produce all of these (see serving-anchors.md section 5):
- `</parameter>` ends a value only when what follows it (after whitespace) is another tag of the
  format (`<parameter=`, `</function>`, `</tool_call>`, `<function=`, `<tool_call>`) or the end of
  generation; otherwise it is part of the value (a file that contains the text). Text is held back
  until that is decidable.
- `<parameter=NAME>` of a declared parameter also ends the value before it (a missing
  `</parameter>`); so do `</function>` followed by the end of the call, and `</tool_call>`.
- Several `<function=...>` in one `<tool_call>`, and a bare `<function=...>` without the wrapper,
  are separate calls. `<function=...>` before `</function>` ends the call before it.
- A function the request did not declare is returned as content text, not as a call: a client
  cannot run it and most reject the whole response; as text, the user sees what the model tried.
- At the end of generation an open call is closed so its arguments are still one JSON object;
  a tag that never completed is returned as content text, unless generation was cut off by the
  token limit: then it is markup the model did not get to finish, and is dropped.
"""

from __future__ import annotations

import enum
import json

from tools.events import find_marker, marker_at
from tools.schema import typed_json
from tools.step_parser import StepParser

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
FUNCTION_OPEN = "<function="
FUNCTION_CLOSE = "</function>"
PARAMETER_OPEN = "<parameter="
PARAMETER_CLOSE = "</parameter>"
MAX_NAME_LENGTH = 256  # a longer "name" is text that merely looks like a tag

_TEXT_TAGS = (TOOL_CALL_OPEN, FUNCTION_OPEN, TOOL_CALL_CLOSE)
_BODY_TAGS = (PARAMETER_OPEN, FUNCTION_CLOSE, TOOL_CALL_CLOSE, FUNCTION_OPEN, TOOL_CALL_OPEN)
_DEMOTED_ENDS = (FUNCTION_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)
_VALUE_ENDS = (PARAMETER_CLOSE, PARAMETER_OPEN, FUNCTION_CLOSE, TOOL_CALL_CLOSE)
_AFTER_PARAMETER_CLOSE = _BODY_TAGS
_AFTER_FUNCTION_CLOSE = (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, FUNCTION_OPEN)


class _State(enum.Enum):
    TEXT = enum.auto()  # content between calls
    WRAPPER = enum.auto()  # after <tool_call>, before its first <function=
    FUNCTION_NAME = enum.auto()  # after <function=
    FUNCTION_BODY = enum.auto()  # inside a call, between parameters
    PARAMETER_NAME = enum.auto()  # after <parameter=
    VALUE_START = enum.auto()  # after <parameter=NAME>, before the format's newline
    VALUE = enum.auto()
    DEMOTED = enum.auto()  # inside a call of an undeclared function, passed on as content


class QwenXmlParser(StepParser):
    """feed() decoded text pieces as they are generated, then finish() once; both return events."""

    def __init__(self, tools: list[dict] | None) -> None:
        steps = {
            _State.TEXT: self._text,
            _State.WRAPPER: self._wrapper,
            _State.FUNCTION_NAME: self._function_name,
            _State.FUNCTION_BODY: self._function_body,
            _State.PARAMETER_NAME: self._parameter_name,
            _State.VALUE_START: self._value_start,
            _State.VALUE: self._value,
            _State.DEMOTED: self._demoted,
        }
        super().__init__(tools, _State.TEXT, steps)
        self._function = ""
        self._num_params = 0
        self._param_is_string = True
        self._typed_value: list[str] = []

    def _text(self, at_end: bool) -> bool:
        pos, marker = find_marker(self._buf, _TEXT_TAGS, at_end)
        self._sink.text(self._buf[:pos])
        self._buf = self._buf[pos + len(marker or "") :]
        if marker == TOOL_CALL_OPEN:
            self._state = _State.WRAPPER
        elif marker == FUNCTION_OPEN:
            self._state = _State.FUNCTION_NAME
        elif marker == TOOL_CALL_CLOSE:
            self._sink.drop_whitespace()
        return marker is not None

    def _wrapper(self, at_end: bool) -> bool:
        body = self._buf.lstrip()
        marker = marker_at(body, 0, (FUNCTION_OPEN, TOOL_CALL_CLOSE), at_end)
        if marker is None:
            return False
        if marker == FUNCTION_OPEN:
            self._buf = body[len(marker) :]
            self._state = _State.FUNCTION_NAME
        elif marker == TOOL_CALL_CLOSE:
            self._buf = body[len(marker) :]
            self._sink.drop_whitespace()
            self._state = _State.TEXT
        else:
            self._sink.text(TOOL_CALL_OPEN)
            self._state = _State.TEXT
        return True

    def _function_name(self, at_end: bool) -> bool:
        name = _tag_name_at(self._buf, 0, at_end)
        if name is None:
            return False
        if not name:  # not a tag after all
            self._sink.text(FUNCTION_OPEN)
            self._state = _State.TEXT
        elif not self._schemas.knows(name):
            self._sink.text(FUNCTION_OPEN + self._take_tag_rest())
            self._state = _State.DEMOTED
        else:
            self._take_tag_rest()
            self._sink.start_call(name)
            self._function = name
            self._num_params = 0
            self._state = _State.FUNCTION_BODY
        return True

    def _function_body(self, at_end: bool) -> bool:
        body = self._buf.lstrip()  # whitespace before a tag is the format's
        if not body:
            if at_end:
                self._buf = ""
                self._end_call()
            return at_end
        marker = marker_at(body, 0, _BODY_TAGS, at_end)
        if marker is None:
            return False
        if marker == PARAMETER_OPEN:
            self._buf = body[len(marker) :]
            self._state = _State.PARAMETER_NAME
        elif marker == FUNCTION_CLOSE:
            self._buf = body[len(marker) :]
            self._end_call()
        elif marker:  # the call ends without </function>; the text state takes the tag
            self._buf = body
            self._end_call()
        else:  # stray text inside a call is content, up to where a tag may start
            end = self._buf.find("<", len(self._buf) - len(body) + 1)
            stray = self._buf if end == -1 else self._buf[:end]
            if end != -1 or not at_end:
                stray = stray.rstrip()
            self._sink.text(stray)
            self._buf = self._buf[len(stray) :]
        return True

    def _parameter_name(self, at_end: bool) -> bool:
        name = _tag_name_at(self._buf, 0, at_end)
        if name is None:
            return False
        if not name:  # not a tag after all
            self._sink.text(PARAMETER_OPEN)
            self._state = _State.FUNCTION_BODY
            return True
        self._take_tag_rest()
        self._param_is_string = self._schemas.is_string(self._function, name)
        self._typed_value = []
        opening = "{" if self._num_params == 0 else ", "
        quote = '"' if self._param_is_string else ""
        self._sink.args(opening + json.dumps(name, ensure_ascii=False) + ": " + quote)
        self._num_params += 1
        self._state = _State.VALUE_START
        return True

    def _value_start(self, at_end: bool) -> bool:
        if not self._buf and not at_end:
            return False
        if self._buf.startswith("\n"):
            self._buf = self._buf[1:]
        self._state = _State.VALUE
        return True

    def _value(self, at_end: bool) -> bool:
        end, ending = self._find_value_end(at_end)
        value = self._buf[:end]
        if value.endswith("\n"):
            value = value[:-1]  # the format's newline (or, until decided, perhaps it)
        self._value_text(value)
        if ending is None and not at_end:
            self._buf = self._buf[len(value) :]
            return False
        self._buf = self._buf[end + (len(ending) if ending == PARAMETER_CLOSE else 0) :]
        self._sink.args('"' if self._param_is_string else typed_json("".join(self._typed_value)))
        self._state = _State.FUNCTION_BODY
        return True

    def _cut_off(self) -> None:
        self._buf = ""
        if self._state in (_State.WRAPPER, _State.FUNCTION_NAME):
            self._state = _State.TEXT  # no call started
        elif self._state is _State.PARAMETER_NAME:
            self._state = _State.FUNCTION_BODY  # the parameter did not start
        elif self._state is _State.VALUE_START:
            self._state = _State.VALUE

    def _demoted(self, at_end: bool) -> bool:
        pos, marker = find_marker(self._buf, _DEMOTED_ENDS, at_end)
        if marker == FUNCTION_CLOSE:
            pos += len(marker)
        self._sink.text(self._buf[:pos])
        self._buf = self._buf[pos:]
        if marker is not None:
            self._state = _State.TEXT
        return marker is not None

    def _end_call(self) -> None:
        self._sink.args("}" if self._num_params else "{}")
        self._sink.end_call()
        self._state = _State.TEXT

    def _value_text(self, text: str) -> None:
        if not text:
            return
        if self._param_is_string:
            self._sink.args(json.dumps(text, ensure_ascii=False)[1:-1])
        else:
            self._typed_value.append(text)

    def _take_tag_rest(self) -> str:
        """Consume the tag's name and its `>`; returns them."""
        end = self._buf.index(">") + 1
        rest, self._buf = self._buf[:end], self._buf[end:]
        return rest

    def _find_value_end(self, at_end: bool) -> tuple[int, str | None]:
        """Where the value ends and the tag that ends it, or (position, None): the text before
        the position is value, from it on it is not decided yet (or, at the end, value too)."""
        buf = self._buf
        pos = buf.find("<")
        while pos != -1:
            marker = marker_at(buf, pos, _VALUE_ENDS, at_end)
            if marker is None:
                return pos, None
            ends = bool(marker) and self._ends_value(marker, pos + len(marker), at_end)
            if ends is None:
                return pos, None
            if ends:
                return pos, marker
            pos = buf.find("<", pos + 1)
        return len(buf), None

    def _ends_value(self, marker: str, after: int, at_end: bool) -> bool | None:
        """Whether `marker`, found in a value, ends it; None while undecidable."""
        if marker == TOOL_CALL_CLOSE:
            return True
        if marker == PARAMETER_OPEN:
            name = _tag_name_at(self._buf, after, at_end)
            if name is None:
                return None
            return bool(name) and self._schemas.declares(self._function, name)
        followers = _AFTER_PARAMETER_CLOSE if marker == PARAMETER_CLOSE else _AFTER_FUNCTION_CLOSE
        rest = len(self._buf) - len(self._buf[after:].lstrip())
        if rest == len(self._buf):
            return True if at_end else None
        follower = marker_at(self._buf, rest, followers, at_end)
        return None if follower is None else bool(follower)


def _tag_name_at(buf: str, pos: int, at_end: bool) -> str | None:
    """The stripped name in buf[pos:] up to `>`; None while it may still grow; "" when the text
    cannot be a name (empty, too long, a newline or `<` before `>`, or no `>` by the end)."""
    end = buf.find(">", pos, pos + MAX_NAME_LENGTH + 1)
    head = buf[pos : pos + MAX_NAME_LENGTH + 1] if end == -1 else buf[pos:end]
    if "<" in head or "\n" in head or (end == -1 and (at_end or len(head) > MAX_NAME_LENGTH)):
        return ""
    if end == -1:
        return None
    return head.strip()
