"""Specification of loss aggregation (``bandpo.aggregate``), SPEC §3.

With mask m (1 on valid tokens), per-token loss L of shape (B, T), n_i = sum_t m_it:

    token-mean               sum_{i,t} L m / sum_{i,t} m
    seq-mean-token-mean      mean over sequences with n_i > 0 of  sum_t L m / n_i
    seq-mean-token-sum       mean over sequences with n_i > 0 of  sum_t L m
    seq-mean-token-sum-norm  sum_{i,t} L m / (B C),  C = loss_agg_constant (default T)   (Dr. GRPO)

Masked entries contribute nothing, whatever they hold. Expected values below are worked out by hand on a 2 x 4 batch.
"""

from __future__ import annotations

import pytest
import torch

from bandpo import LOSS_AGG_MODES, aggregate

# Masked entries hold 100 so that any leak of padding into the loss is visible.
LOSS = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, 100.0, 100.0, 100.0]], dtype=torch.float64)
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
EMPTY_ROW_LOSS = torch.full((1, 4), 7.0, dtype=torch.float64)
EMPTY_ROW_MASK = torch.zeros(1, 4, dtype=torch.float64)


def test_modes_are_the_four_in_common_use():
    assert set(LOSS_AGG_MODES) == {
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    }


def test_token_mean_weighs_every_valid_token_alike():
    """(1 + 2 + 3 + 5) / 4 = 2.75."""
    assert aggregate(LOSS, MASK, "token-mean").item() == pytest.approx(2.75)


def test_seq_mean_token_mean_averages_per_sequence_then_over_sequences():
    """((1 + 2 + 3) / 3 + 5 / 1) / 2 = (2 + 5) / 2 = 3.5."""
    assert aggregate(LOSS, MASK, "seq-mean-token-mean").item() == pytest.approx(3.5)


def test_seq_mean_token_sum_averages_token_sums_over_sequences():
    """((1 + 2 + 3) + 5) / 2 = 5.5."""
    assert aggregate(LOSS, MASK, "seq-mean-token-sum").item() == pytest.approx(5.5)


def test_seq_mean_token_sum_norm_divides_by_batch_times_sequence_length_by_default():
    """(1 + 2 + 3 + 5) / (B * T) = 11 / (2 * 4) = 1.375."""
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(1.375)


def test_seq_mean_token_sum_norm_uses_the_given_constant():
    """(1 + 2 + 3 + 5) / (B * C) = 11 / (2 * 8) = 0.6875 with C = 8."""
    got = aggregate(LOSS, MASK, "seq-mean-token-sum-norm", loss_agg_constant=8.0)
    assert got.item() == pytest.approx(0.6875)


def test_loss_agg_constant_is_ignored_by_other_modes():
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        assert aggregate(LOSS, MASK, mode, loss_agg_constant=8.0) == aggregate(LOSS, MASK, mode)


@pytest.mark.parametrize(
    "mode, expected",
    [("token-mean", 2.75), ("seq-mean-token-mean", 3.5), ("seq-mean-token-sum", 5.5)],
)
def test_sequences_without_valid_tokens_do_not_count(mode, expected):
    """Adding a fully masked row (values 7) changes neither the numerator nor the sequence count."""
    loss = torch.cat([LOSS, EMPTY_ROW_LOSS])
    mask = torch.cat([MASK, EMPTY_ROW_MASK])
    assert aggregate(loss, mask, mode).item() == pytest.approx(expected)


def test_seq_mean_token_sum_norm_keeps_its_constant_normaliser_b_times_c():
    """Dr. GRPO's normaliser B * C does not depend on the mask: 11 / (3 * 4) with a masked third row."""
    loss = torch.cat([LOSS, EMPTY_ROW_LOSS])
    mask = torch.cat([MASK, EMPTY_ROW_MASK])
    assert aggregate(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(11 / 12)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_all_zero_mask_gives_exactly_zero_loss_and_zero_gradient(mode):
    loss = LOSS.clone().requires_grad_(True)
    value = aggregate(loss, torch.zeros_like(MASK), mode)
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(loss.grad, torch.zeros_like(LOSS))


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_masked_entries_get_no_gradient(mode):
    loss = LOSS.clone().requires_grad_(True)
    aggregate(loss, MASK, mode).backward()
    assert torch.all(loss.grad[MASK == 0] == 0)
    assert torch.all(loss.grad[MASK == 1] > 0)


def test_token_mean_gradient_is_mask_over_token_count():
    """d/dL_it = m_it / sum m = m_it / 4."""
    loss = LOSS.clone().requires_grad_(True)
    aggregate(loss, MASK, "token-mean").backward()
    assert torch.allclose(loss.grad, MASK / 4)


def test_seq_mean_token_mean_gradient_is_mask_over_sequence_length_and_sequence_count():
    """d/dL_it = m_it / (n_i * number of non-empty sequences): 1/6 in row 0, 1/2 in row 1."""
    loss = LOSS.clone().requires_grad_(True)
    aggregate(loss, MASK, "seq-mean-token-mean").backward()
    expected = torch.tensor([[1 / 6, 1 / 6, 1 / 6, 0.0], [1 / 2, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(loss.grad, expected)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_bool_and_float_masks_agree(mode):
    assert aggregate(LOSS, MASK.bool(), mode) == aggregate(LOSS, MASK, mode)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")], ids=["+inf", "-inf", "nan"])
def test_masked_entries_may_hold_infinities_and_nan(mode, value):
    """Padding contributes nothing whatever it holds: the value and the gradient are those of finite padding."""
    clean = LOSS.clone().requires_grad_(True)
    dirty = LOSS.masked_fill(MASK == 0, value).requires_grad_(True)
    expected, got = aggregate(clean, MASK, mode), aggregate(dirty, MASK, mode)
    expected.backward()
    got.backward()
    assert got.item() == expected.item()
    assert torch.equal(dirty.grad, clean.grad)


@pytest.mark.parametrize("batch", [2, 0])
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_zero_length_sequences_give_zero(mode, batch):
    """T = 0 (or B = 0) is an all-zero mask: the loss is 0 in every mode, with no error."""
    empty = torch.zeros(batch, 0, dtype=torch.float64)
    assert aggregate(empty, empty, mode).item() == 0.0


@pytest.mark.parametrize("mode", ["token_mean", "mean", "seq-mean-token-sum-normalized", ""])
def test_unknown_loss_agg_mode_is_rejected(mode):
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate(LOSS, MASK, mode)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("constant", [0.0, -4.0, float("nan"), float("inf"), "8"])
def test_bad_loss_agg_constant_is_rejected_in_every_mode(constant, mode):
    """Checked even where the mode ignores it; the error quotes the value given."""
    with pytest.raises(ValueError, match=rf"loss_agg_constant must be None or a finite number > 0, got {constant!r}"):
        aggregate(LOSS, MASK, mode, loss_agg_constant=constant)
