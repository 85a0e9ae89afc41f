"""How deeply a JSON body nests, measured on its bytes before it is decoded.

msgspec, the chat template (`tojson`) and the grammar compiler all go one call deeper per level,
so a body nested thousands of levels deep ended in a RecursionError (500). The check is a few
C-speed passes: a body with no more brackets than the limit is not scanned at all, and the
rest is reduced to its quotes and brackets and summed in chunks (about 10 ms per MB of
brackets), so a 32 MB hostile body costs a fraction of a second and little memory.
"""

from __future__ import annotations

import numpy as np

MAX_NESTING = 128  # arrays and objects inside each other; real tool schemas use a few dozen
_CHUNK = 1 << 20
_STRUCTURE = b'"[]{}'
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_STEP = np.zeros(256, np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_QUOTE = ord('"')


def nests_deeper_than(body: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether arrays and objects in the JSON text `body` nest more than `limit` levels.
    Exact for valid JSON; for invalid JSON either answer leads to a 400."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    # Escaped backslashes first (pairs, left to right), then escaped quotes: every quote left
    # opens or closes a string, and brackets between an opening and a closing quote are text.
    structure = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    depth, in_string = 0, 0
    for start in range(0, len(structure), _CHUNK):
        chunk = np.frombuffer(structure, np.uint8, min(_CHUNK, len(structure) - start), start)
        inside = (np.cumsum(chunk == _QUOTE, dtype=np.int32) + in_string) & 1
        levels = np.cumsum(np.where(inside, 0, _STEP[chunk]), dtype=np.int64) + depth
        if levels.max() > limit:
            return True
        depth, in_string = int(levels[-1]), int(inside[-1])
    return False
