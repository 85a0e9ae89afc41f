"""Snapshots: serialize, restore and continue equals an uninterrupted run; corruption is refused."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Checkpoint

IDS = np.random.default_rng(5).integers(0, 248044, 180)


@pytest.fixture(params=["dense", "moe"])
def model(request, tiny_model, tiny_moe_model):
    return tiny_model if request.param == "dense" else tiny_moe_model


def test_logits_are_far_from_flat(model):
    logits = model.forward(IDS[:50], model.new_state())
    assert logits.std() > 1.0


def test_token_by_token_equals_one_prefill(model):
    full = model.forward(IDS[:100], model.new_state())
    state = model.new_state()
    steps = np.concatenate([model.forward([t], state) for t in IDS[:100]])
    assert np.abs(steps - full).max() <= 1e-4
    assert state.position == 100


def test_snapshot_serialize_restore_continue(model):
    uninterrupted = model.new_state()
    model.forward(IDS[:97], uninterrupted)
    reference = model.forward(IDS[97:], uninterrupted)
    state = model.new_state()
    model.forward(IDS[:97], state)
    blob = state.snapshot().to_bytes()
    restored = model.restore(Checkpoint.from_bytes(blob))
    assert restored.position == 97
    rest = model.forward(IDS[97:], restored)
    assert np.abs(rest - reference).max() <= 1e-5
    # and against one pass over everything (other chunk boundaries: float32 rounding only)
    assert np.abs(rest - model.forward(IDS, model.new_state())[97:]).max() <= 1e-3


def test_checkpoint_is_immutable_and_reusable(model):
    state = model.new_state()
    model.forward(IDS[:40], state)
    ckpt = state.snapshot()
    assert ckpt.position == 40 and ckpt.fingerprint == model.fingerprint
    assert all(not a.flags.writeable for pair in ckpt.recurrent + ckpt.kv for a in pair)
    assert all(k.shape[0] == 40 for k, _ in ckpt.kv)
    first = model.forward(IDS[40:60], model.restore(ckpt))
    model.forward(IDS[60:80], state)  # the original state moving on must not touch the checkpoint
    second = model.forward(IDS[40:60], model.restore(ckpt))
    np.testing.assert_array_equal(first, second)
    assert ckpt.nbytes == model.config.recurrent_state_bytes + 40 * model.config.kv_bytes_per_token


def test_restore_by_filling_prepared_kv_buffers(tiny_model):
    """`prepare_kv` + `resume` (how the session cache restores, one KV copy) equals `restore`."""
    state = tiny_model.new_state()
    tiny_model.forward(IDS[:70], state)
    ckpt = state.snapshot()
    filled = tiny_model.new_state()
    for (k_rows, v_rows), (k, v) in zip(filled.prepare_kv(70), ckpt.kv, strict=True):
        k_rows[...], v_rows[...] = k, v
    filled.resume(70, ckpt.recurrent)
    expected = tiny_model.forward(IDS[70:90], tiny_model.restore(ckpt))
    np.testing.assert_array_equal(tiny_model.forward(IDS[70:90], filled), expected)
    with pytest.raises(ValueError, match="cannot keep"):
        filled.prepare_kv(100, keep=95)  # more rows than the state holds
    unprepared = tiny_model.new_state()
    with pytest.raises(ValueError, match="not prepared"):
        unprepared.resume(70, ckpt.recurrent)


def test_reusing_a_live_state_keeps_its_rows_and_never_changes_a_snapshot(tiny_model):
    """A finished turn's state restored to an earlier checkpoint keeps its own KV rows (no copy), but
    copies the buffer instead while a snapshot (or any view) of it is alive."""
    at_40 = tiny_model.new_state()
    tiny_model.forward(IDS[:40], at_40)
    ckpt_40 = at_40.snapshot()
    expected = tiny_model.forward(IDS[40:70], tiny_model.restore(ckpt_40))
    for hold_snapshot in (False, True):
        live = tiny_model.new_state()
        tiny_model.forward([*IDS[:40], *[5] * 20], live)  # same first 40 tokens, then something else
        snapshot = live.snapshot() if hold_snapshot else None
        before = None if snapshot is None else snapshot.kv[0][0].copy()
        buffer = id(live._k[0])  # an id, not a reference: a reference would count as a view
        views = live.prepare_kv(40, keep=40)
        assert all(k.shape[0] == 40 for k, _ in views)
        live.resume(40, ckpt_40.recurrent)
        assert (id(live._k[0]) == buffer) is not hold_snapshot
        np.testing.assert_allclose(tiny_model.forward(IDS[40:70], live), expected, atol=1e-5)
        if snapshot is not None:
            np.testing.assert_array_equal(snapshot.kv[0][0], before)


def test_corrupt_checkpoints_are_refused(tiny_model):
    state = tiny_model.new_state()
    tiny_model.forward(IDS[:10], state)
    blob = bytearray(state.snapshot().to_bytes())
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x40
    for bad in (bytes(flipped), bytes(blob[:-100]), bytes(blob[:20]), b"", b"not a checkpoint at all........."):
        with pytest.raises(ValueError):
            Checkpoint.from_bytes(bad)


def test_checkpoint_of_another_model_is_refused(tiny_model, tiny_moe_model):
    state = tiny_moe_model.new_state()
    tiny_moe_model.forward(IDS[:5], state)
    with pytest.raises(ValueError, match="different model"):
        tiny_model.restore(state.snapshot())
