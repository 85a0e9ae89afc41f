"""The real Codex CLI against the daemon (scripts/codex_smoke.py); skipped where codex is not
installed (`npm install @openai/codex@0.171.0`, then put it on PATH or in $CODEX_BIN)."""

from __future__ import annotations

import os
import shutil

import pytest

from scripts import codex_smoke

CODEX = os.environ.get("CODEX_BIN") or shutil.which("codex")


@pytest.mark.slow
@pytest.mark.skipif(not CODEX, reason="codex CLI not installed")
@pytest.mark.parametrize("think", [True, False])
def test_codex_exec_finishes_its_turn(think, capsys):
    status = codex_smoke.main(["--codex", CODEX, *([] if think else ["--no-think"])])
    out = capsys.readouterr().out
    assert status == 0, out
    assert '"turn.completed"' in out and "1 Responses requests" in out
