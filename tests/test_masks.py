"""DiffEdit's mask pieces (docs/diffedit.md, step 1) with analytic stand-ins for the UNet: no model needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from retouch.filters import box_mean, connected_regions, guided_filter
from retouch.masks import binarize, difference_map, refined_scores, strongest_regions, user_mask
from retouch.schedule import Schedule
from retouch.shapes.architecture import SD1_SCHEDULER

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def schedule() -> Schedule:
    return Schedule.from_scheduler(DDIMScheduler(**SD1_SCHEDULER))


def recording_eps(log: list):
    """A stand-in ε(x_t, t, cond): records its inputs; depends on x and on the text (cond's mean)."""

    def eps_fn(x, t, cond):
        log.append((x.clone(), t, cond.clone()))
        return torch.tanh(x) * cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)

    return eps_fn


def conds(*values: float) -> list[torch.Tensor]:
    """Text embeddings [1, L, D] whose mean is the given value."""
    return [torch.full((1, 3, 5), v) for v in values]


def test_difference_map_formula_one_call_per_chunk_and_own_noise(schedule):
    g = torch.Generator().manual_seed(0)
    x0, noises = torch.randn(1, 4, 6, 5, generator=g), torch.randn(7, 4, 6, 5, generator=g)
    q, r = conds(2.0, -1.0)
    log = []
    d = difference_map(recording_eps(log), schedule, x0, 481, q, r, noises, chunk=16)
    assert d.shape == (6, 5)
    assert len(log) == 1 and log[0][0].shape[0] == 14  # query and reference of 7 noises, one call
    x = log[0][0]
    assert torch.equal(x[:7], x[7:]), "both texts must see the same noisy latent"
    assert all(not torch.equal(x[i], x[j]) for i in range(7) for j in range(i)), "one noise per sample"
    x_t = schedule.add_noise(x0, noises, 481)
    expected = (3.0 * torch.tanh(x_t)).abs().mean(dim=(0, 1))  # |ε(Q) − ε(R)| = |2 − (−1)|·|tanh x_t|
    torch.testing.assert_close(d, expected)


def test_difference_map_does_not_depend_on_chunking(schedule):
    g = torch.Generator().manual_seed(1)
    x0, noises = torch.randn(1, 4, 4, 4, generator=g), torch.randn(5, 4, 4, 4, generator=g)
    q, r = conds(1.0, 0.5)
    log_a, log_b = [], []
    a = difference_map(recording_eps(log_a), schedule, x0, 481, q, r, noises, chunk=16)
    b = difference_map(recording_eps(log_b), schedule, x0, 481, q, r, noises, chunk=2)
    torch.testing.assert_close(a, b)
    assert [e[0].shape[0] for e in log_b] == [4, 4, 2]


def test_difference_map_with_guidance_costs_three_branches(schedule):
    x0, noises = torch.zeros(1, 4, 3, 3), torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    q, r, u = conds(2.0, 1.0, 0.0)
    log = []
    d = difference_map(recording_eps(log), schedule, x0, 481, q, r, noises, uncond=u, guidance_scale=7.5)
    assert log[0][0].shape[0] == 6
    x_t = schedule.add_noise(x0, noises, 481)
    # ε(∅) cancels: |ε̃(Q) − ε̃(R)| = w·|ε(Q) − ε(R)|
    torch.testing.assert_close(d, (7.5 * torch.tanh(x_t)).abs().mean(dim=(0, 1)))


def test_identical_texts_give_an_empty_mask_not_nan(schedule):
    x0, noises = torch.randn(1, 4, 4, 4), torch.randn(3, 4, 4, 4)
    q = conds(1.0)[0]
    d = difference_map(recording_eps([]), schedule, x0, 481, q, q.clone(), noises)
    assert torch.equal(d, torch.zeros_like(d))
    mask, scores = binarize(d)
    assert torch.isfinite(scores).all() and mask.sum() == 0 and scores.sum() == 0


def test_binarize_clamps_at_k_mean_rescales_and_thresholds():
    d = torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 100.0, 1.0]])  # mean 14.5, k·mean 43.5
    mask, scores = binarize(d, clamp=3.0, threshold=0.5)
    assert scores.max() == 1.0 and scores.min() == 0.0  # the outlier is clamped to 1
    torch.testing.assert_close(scores[0, 1:], torch.tensor([1.0, 2.0, 3.0]) / 43.5)
    assert mask.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0]]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    loose = binarize(d, clamp=0.25)[0]  # k·mean = 3.625: everything above 1.8 is in
    assert loose.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]


def test_binarize_threshold_is_strict():
    mask, _ = binarize(torch.tensor([[1.0, 2.0, 3.0]]), clamp=1.5, threshold=0.5)  # top 3: [1/3, 2/3, 1]
    assert mask.tolist() == [[0, 1, 1]]
    mask, _ = binarize(torch.tensor([[0.0, 1.0]]), clamp=2.0, threshold=0.5)  # top 1: [0, 1]
    assert mask.tolist() == [[0, 1]]


def test_user_mask_any_pixel_rule_and_padding():
    m = np.zeros((10, 13), np.uint8)  # image 13 wide, 10 high; latent 2x2 cells of 8 px, padded
    m[9, 12] = 255  # one pixel in the bottom-right cell
    lat = user_mask(m, 10, 13, (2, 2), 8)
    assert lat.tolist() == [[0, 0], [0, 1]]
    assert user_mask(np.zeros((10, 13)), 10, 13, (2, 2), 8).sum() == 0


def test_user_mask_wrong_size_or_nan_is_refused():
    with pytest.raises(ValueError, match="13x10"):
        user_mask(np.zeros((12, 13)), 10, 13, (2, 2), 8)
    bad = np.zeros((10, 13))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        user_mask(bad, 10, 13, (2, 2), 8)
    with pytest.raises(ValueError, match="cannot read mask"):
        user_mask("/nonexistent/mask.png", 10, 13, (2, 2), 8)


@pytest.mark.parametrize("r", [1, 3, 12])
def test_box_mean_is_the_mean_over_the_window_clipped_at_the_borders(r):
    x = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros_like(x)
    for i in range(7):
        for j in range(9):  # the window, cut at the image's borders (wider than it at r = 12)
            expected[:, i, j] = x[:, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean((1, 2))
    torch.testing.assert_close(box_mean(x, r), expected)
    if r < 4:  # avg_pool2d's window may be at most twice its padding + 1
        torch.testing.assert_close(
            box_mean(x, r), F.avg_pool2d(x[None], 2 * r + 1, 1, r, count_include_pad=False)[0]
        )


def test_guided_filter_smooths_p_where_the_guide_is_flat_and_keeps_its_edges():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(12, 12, generator=g)
    flat = torch.full((3, 12, 12), 0.4)
    # a = 0, b = the window's mean of p; q averages b over the windows covering each pixel
    torch.testing.assert_close(guided_filter(flat, p, 2, 1e-3), box_mean(box_mean(p, 2), 2))
    edge = torch.zeros(3, 12, 12)
    edge[:, :, 6:] = 1.0  # black left half, white right half
    step = (edge[0] > 0).float() + 0.05 * torch.randn(12, 12, generator=g)  # p follows the edge
    q = guided_filter(edge, step, 3, 1e-3)
    assert q[:, :6].max() < 0.1 and q[:, 6:].min() > 0.9  # the edge kept
    blurred = guided_filter(torch.zeros(3, 12, 12), step, 3, 1e-3)  # the same p, a flat guide
    assert blurred[:, 5].min() > 0.3 and blurred[:, 6].max() < 0.7  # what a plain mean would do


def test_refined_scores_fill_a_ringed_object_and_do_not_spill_past_it():
    """Scores ringing a red square (its border cells 1, its middle 0.2) and spilling one cell past
    it (0.7): at threshold 0.5 the raw mask is the ring and the spill; refined on the image, the
    square exactly."""
    img = torch.ones(3, 32, 32)  # white; 4-pixel cells: 8 × 8 latent cells
    img[:, 8:24, 8:24] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # red square: cells 2..5
    scores = torch.zeros(8, 8)
    scores[1:7, 1:7] = 0.7
    scores[2:6, 2:6] = 1.0
    scores[3:5, 3:5] = 0.2
    square = torch.zeros(8, 8)
    square[2:6, 2:6] = 1
    assert not torch.equal((scores > 0.5).float(), square)
    refined = refined_scores(scores, (img * 2 - 1)[None], 4, 2)
    assert refined.shape == (8, 8) and 0 <= refined.min() and refined.max() <= 1
    assert torch.equal((refined > 0.5).float(), square)


def test_regions_are_the_mask_connected_by_sides_and_corners():
    mask = torch.zeros(6, 7)
    mask[0:2, 0:2] = 1  # a square
    mask[2, 2] = 1  # touching it by a corner: the same region
    mask[4:6, 3:7] = 1  # another
    mask[0, 6] = 1  # a lone cell
    labels = connected_regions(mask)
    assert torch.equal(labels > 0, mask > 0)
    assert len(labels[labels > 0].unique()) == 3
    assert len(labels[0:3, 0:3][mask[0:3, 0:3] > 0].unique()) == 1
    assert labels[0, 6] not in labels[4:6, 3:7]


def test_strongest_regions_keep_those_whose_summed_scores_reach_the_ratio():
    mask = torch.zeros(6, 6)
    mask[0:2, 0:2] = 1  # 4 cells at 0.9: 3.6
    mask[4:6, 4:6] = 1  # 4 cells at 0.7: 2.8, 0.78 of the strongest
    mask[0, 5] = 1  # 1 cell at 1.0: 1.0
    scores = torch.zeros(6, 6)
    scores[0:2, 0:2], scores[4:6, 4:6], scores[0, 5] = 0.9, 0.7, 1.0
    assert torch.equal(strongest_regions(mask, scores, 0.0), mask)
    both = strongest_regions(mask, scores, 0.75)
    assert both[0, 5] == 0 and torch.equal(both[0:2, 0:2], mask[0:2, 0:2]) and both[4:6, 4:6].all()
    one = strongest_regions(mask, scores, 0.8)
    assert one.sum() == 4 and one[0:2, 0:2].all()
    assert torch.equal(strongest_regions(torch.zeros(3, 3), scores[:3, :3], 0.8), torch.zeros(3, 3))
