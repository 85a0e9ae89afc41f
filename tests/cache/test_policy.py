from cache.policy import checkpoint_positions

S = 9  # stands for <|im_start|>


def test_message_boundaries_and_tail():
    ids = [S, 1, 1, 1, S, 2, 2, S] + [3] * 12
    assert checkpoint_positions(ids, {S}, interval=100, tail=4) == [4, 7, 16]


def test_no_tail_checkpoint_right_after_the_generation_prompts_boundary():
    """A chat prompt ends with `<|im_start|>assistant\n<think>\n`: its boundary is the near-end checkpoint."""
    ids = [S, 1, 1, 1, 1, 1, 1, 1, 1, 1, S, 5, 5, 5, 5]
    assert checkpoint_positions(ids, {S}, interval=100, tail=4) == [10]


def test_long_messages_get_interval_checkpoints():
    ids = [S] + [1] * 20 + [S] + [2] * 5
    assert checkpoint_positions(ids, {S}, interval=8, tail=2) == [8, 16, 21, 25]


def test_short_prompts():
    assert checkpoint_positions([S, 1], {S}, tail=4) == []
    assert checkpoint_positions([], {S}) == []
    assert checkpoint_positions([1, 2, 3, 4, 5], {S}, tail=4) == [1]
