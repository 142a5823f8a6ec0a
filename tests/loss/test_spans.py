import pytest
import torch

from slime_entropy.loss.spans import ResponseSpans, zigzag_token_ranges


def brute_force_local_tokens(total, response, cp_rank, cp_size):
    """Token positions whose predicting row lies in this rank's zigzag chunks, in local order."""
    chunk = -(-total // (2 * cp_size))
    rows = list(range(cp_rank * chunk, (cp_rank + 1) * chunk)) + list(
        range((2 * cp_size - 1 - cp_rank) * chunk, (2 * cp_size - cp_rank) * chunk)
    )
    prompt = total - response
    return [p + 1 for p in rows if prompt - 1 <= p <= total - 2]


@pytest.mark.parametrize("cp_size", [2, 3, 4])
def test_zigzag_ranges_match_brute_force(cp_size):
    for total in range(2, 40):
        for response in range(0, total):
            covered = []
            for rank in range(cp_size):
                _, _, ranges = zigzag_token_ranges(total, response, rank, cp_size)
                tokens = [t for a, b in ranges for t in range(a, b)]
                assert tokens == brute_force_local_tokens(total, response, rank, cp_size)
                covered += tokens
            # every response token is scored by exactly one CP rank
            assert sorted(covered) == list(range(total - response, total))


def test_layout_rows_and_targets_cp1():
    tokens = [torch.tensor([5, 6, 7, 8]), torch.tensor([1, 2, 3])]
    layout = ResponseSpans.build(tokens, [4, 3], [2, 1])
    # sample 0 occupies rows 0..3: its response tokens 7, 8 are scored by rows 1, 2;
    # sample 1 occupies rows 4..6: its response token 3 is scored by row 5
    assert layout.rows.tolist() == [1, 2, 5]
    assert layout.targets.tolist() == [7, 8, 3]
    assert layout.local_lengths == [2, 1]
    mask = torch.tensor([1, 0])
    assert layout.local_part(mask, 0).tolist() == [1, 0]


def test_layout_rows_cp2_follow_local_stream():
    total, response = 9, 5
    tokens = [torch.arange(100, 100 + total)]
    for rank in range(2):
        layout = ResponseSpans.build(tokens, [total], [response], cp_rank=rank, cp_size=2)
        chunk = 3  # ceil(9 / 4)
        local_rows = list(range(rank * chunk, (rank + 1) * chunk)) + list(
            range((3 - rank) * chunk, (4 - rank) * chunk)
        )
        expected_tokens = brute_force_local_tokens(total, response, rank, 2)
        # the row scoring token t is sequence position t - 1, found at its index in the local stream
        assert layout.rows.tolist() == [local_rows.index(t - 1) for t in expected_tokens]
        assert layout.targets.tolist() == [100 + t for t in expected_tokens]


def test_layout_errors_are_clear():
    with pytest.raises(ValueError, match="total_lengths says 5"):
        ResponseSpans.build([torch.arange(4)], [5], [2])
    with pytest.raises(ValueError, match="non-empty prompt"):
        ResponseSpans.build([torch.arange(4)], [4], [4])
    with pytest.raises(ValueError, match="inconsistent"):
        ResponseSpans.build([torch.arange(4)], [4, 4], [2])
