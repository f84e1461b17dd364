"""MoCo v3's RGB augmentation recipe (common/augment.py, `ColourView`): each op against a hand
computation on small tensors, the batched jitter order against a per-sample reference, the
draws' ranges and probabilities over many samples from a fixed generator, determinism, and
the wiring in moco/data.py (grey images keep the grayscale pair)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from reference_trainers.common import augment
from reference_trainers.common.augment import (MOCO_V3_VIEWS, ColourDraws, ColourView, CropView,
                                               adjust_brightness, adjust_contrast, adjust_hue,
                                               adjust_saturation, apply_colour_view,
                                               draw_colour_view, gaussian_blur, solarize,
                                               to_grayscale, two_crops)
from reference_trainers.common.errors import DataError
from reference_trainers.moco import data as moco_data

# a view that leaves every image as it is, for switching single ops on
IDENTITY = ColourView(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0,
                      blur_p=0.0, solarize_p=0.0, flip_p=0.0)


def pixel(*rgb: float) -> torch.Tensor:
    """One 1 x 1 RGB image, (1, 3, 1, 1)."""
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)


def within_binomial(hits: torch.Tensor, p: float) -> bool:
    """The share of True in `hits` lies within 5 standard deviations of p (exact for 0, 1)."""
    n = hits.numel()
    return abs(hits.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------ the ops
@pytest.mark.parametrize("shift, expected", [
    (1 / 3, (0, 1, 0)), (2 / 3, (0, 0, 1)), (-1 / 3, (0, 0, 1)), (1 / 6, (1, 1, 0)),
    (1 / 2, (0, 1, 1)), (-1 / 6, (1, 0, 1)), (1.0, (1, 0, 0)), (0.0, (1, 0, 0))])
def test_hue_turns_pure_red_round_the_colour_wheel(shift, expected):
    out = adjust_hue(pixel(1, 0, 0), torch.tensor([shift]))
    torch.testing.assert_close(out.flatten(), torch.tensor(expected, dtype=torch.float32),
                               atol=1e-6, rtol=0)


def test_hue_keeps_value_and_chroma_and_leaves_grey_alone():
    # (0.8, 0.4, 0.2): max 0.8 (red), chroma 0.6, hue (0.4 - 0.2) / 0.6 / 6 = 1/18 of a turn;
    # a further 1/18 puts it 2/3 of the way through the red-to-yellow sextant: green
    # = min + chroma * 2/3 = 0.6.
    out = adjust_hue(pixel(0.8, 0.4, 0.2), torch.tensor([1 / 18]))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.8, 0.6, 0.2]), atol=1e-6, rtol=0)
    x = torch.rand(6, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    shift = torch.linspace(-0.5, 0.5, 6)
    shifted = adjust_hue(x, shift)
    torch.testing.assert_close(shifted.amax(1), x.amax(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(shifted.amin(1), x.amin(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_hue(shifted, -shift), x, atol=1e-5, rtol=0)
    grey = torch.full((1, 3, 2, 2), 0.3)
    assert torch.equal(adjust_hue(grey, torch.tensor([0.25])), grey)
    one_channel = torch.rand(2, 1, 3, 3)
    assert torch.equal(adjust_hue(one_channel, torch.tensor([0.1, 0.2])), one_channel)


def test_grayscale_uses_pillows_luma_weights_on_every_channel():
    images = torch.cat([pixel(1, 0, 0), pixel(0, 1, 0), pixel(0, 0, 1), pixel(1, 1, 1)])
    luma = to_grayscale(images)
    assert luma.shape == (4, 1, 1, 1)
    torch.testing.assert_close(luma.flatten(), torch.tensor([0.299, 0.587, 0.114, 1.0]),
                               atol=1e-6, rtol=0)
    view = dataclasses.replace(IDENTITY, grayscale_p=1.0)
    out = augment.augment_colour_view(images, view, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, luma.expand(4, 3, 1, 1), atol=1e-6, rtol=0)


def test_saturation_zero_is_grayscale_one_is_the_image_two_doubles_the_distance():
    x = pixel(0.6, 0.5, 0.4)
    luma = 0.299 * 0.6 + 0.587 * 0.5 + 0.114 * 0.4
    torch.testing.assert_close(adjust_saturation(x, torch.tensor([0.0])),
                               torch.full((1, 3, 1, 1), luma), atol=1e-6, rtol=0)
    torch.testing.assert_close(adjust_saturation(x, torch.tensor([1.0])), x, atol=1e-6, rtol=0)
    twice = torch.tensor([2 * 0.6 - luma, 2 * 0.5 - luma, 2 * 0.4 - luma])
    torch.testing.assert_close(adjust_saturation(x, torch.tensor([2.0])).flatten(), twice,
                               atol=1e-6, rtol=0)
    # clamped: red saturated further stays red
    assert torch.equal(adjust_saturation(pixel(1, 0, 0), torch.tensor([1.5])), pixel(1, 0, 0))


def test_brightness_scales_and_contrast_blends_with_the_mean_luma():
    x = torch.tensor([[0.2, 0.6], [0.9, 0.1]]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    torch.testing.assert_close(adjust_brightness(x, torch.tensor([1.4])),
                               (x * 1.4).clamp(max=1.0))
    mean = (0.2 + 0.6 + 0.9 + 0.1) / 4  # a grey image: its luma is itself
    torch.testing.assert_close(adjust_contrast(x, torch.tensor([0.5])), 0.5 * x + 0.5 * mean,
                               atol=1e-6, rtol=0)
    colour = torch.cat([pixel(1, 0, 0), pixel(0, 0, 1)], dim=3)  # (1, 3, 1, 2)
    mean = (0.299 + 0.114) / 2
    torch.testing.assert_close(adjust_contrast(colour, torch.tensor([0.0])),
                               torch.full_like(colour, mean), atol=1e-6, rtol=0)


def test_solarize_inverts_from_pillows_threshold_128_of_255():
    x = torch.tensor([0.0, 127 / 255, 128 / 255, 200 / 255, 1.0]).view(1, 1, 1, 5)
    expected = torch.tensor([0.0, 127 / 255, 127 / 255, 55 / 255, 0.0]).view(1, 1, 1, 5)
    torch.testing.assert_close(solarize(x, ColourView().solarize_threshold), expected,
                               atol=1e-6, rtol=0)


def gaussian_2d(sigma: float, radius: int) -> torch.Tensor:
    """The normalised, truncated 2-D Gaussian by hand: g(dy) g(dx), g summing to 1."""
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.3, 2.0])
def test_blur_of_a_delta_is_a_normalised_gaussian(sigma):
    radius = augment.blur_radius(2.0)
    assert radius == 8
    delta = torch.zeros(1, 3, 2 * radius + 5, 2 * radius + 5)
    delta[:, :, radius + 2, radius + 2] = 1.0
    out = gaussian_blur(delta, torch.tensor([sigma]), radius=radius)
    window = out[0, :, 2:-2, 2:-2]
    torch.testing.assert_close(window, gaussian_2d(sigma, radius).expand(3, -1, -1),
                               atol=1e-7, rtol=1e-5)
    assert out.sum().item() == pytest.approx(3.0, abs=1e-5)
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    variance = (window[0].sum(0) * d ** 2).sum().item()
    # sampled at whole pixels, a Gaussian keeps its variance once sigma reaches a pixel, is
    # a little narrower below, and is all but a delta at 0.1 (as Pillow's blur is there)
    if sigma >= 1.0:
        assert variance == pytest.approx(sigma ** 2, rel=1e-3)
    elif sigma >= 0.5:
        assert variance == pytest.approx(sigma ** 2, rel=1e-2)
    else:
        assert window[0, radius, radius].item() > 0.9999


def test_blur_in_a_view_uses_the_drawn_sigma():
    view = dataclasses.replace(IDENTITY, blur_p=1.0)
    size = 21
    delta = torch.zeros(16, 3, size, size)
    delta[:, :, size // 2, size // 2] = 1.0
    draws = draw_colour_view(view, 16, size, size, generator=torch.Generator().manual_seed(2))
    assert draws.blur.all()
    assert ((draws.sigma >= 0.1) & (draws.sigma <= 2.0)).all() and draws.sigma.std() > 0.2
    out = apply_colour_view(delta, draws, view)
    r = size // 2 - 2  # the centre window, clear of the replicated edges
    for i, sigma in enumerate(draws.sigma.tolist()):
        expected = gaussian_2d(sigma, augment.blur_radius(2.0))[8 - r:8 + r + 1, 8 - r:8 + r + 1]
        torch.testing.assert_close(out[i, 0, 2:-2, 2:-2], expected, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------ the crop
def test_crop_area_and_aspect_stay_in_bounds_over_many_draws():
    n = 20_000
    # on a 3:2 image no box with aspect <= 4/3 covers more than (4/3) / (3/2) = 8/9 of it
    for (height, width), largest in (((224, 224), 1.0), ((160, 240), 8 / 9)):
        d = draw_colour_view(ColourView(), n, height, width,
                             generator=torch.Generator().manual_seed(1))
        area = d.box_width * d.box_height
        aspect = d.box_width * width / (d.box_height * height)
        assert area.min() >= 0.08 - 1e-6 and area.max() <= largest + 1e-6
        assert aspect.min() >= 3 / 4 - 1e-5 and aspect.max() <= 4 / 3 + 1e-5
        assert area.min() < 0.081 and area.max() > largest - 0.01  # the whole range is reached
        assert (d.box_width <= 1 + 1e-6).all() and (d.box_height <= 1 + 1e-6).all()
        assert ((d.position >= 0) & (d.position <= 1)).all()
        # torchvision draws area uniformly and keeps the first box that fits, so large areas
        # are thinned: the kept mean lies below the uniform mean 0.54
        assert 0.35 < area.mean().item() < 0.54


def test_a_box_that_never_fits_falls_back_to_the_largest_centred_one():
    # a 100 x 300 image and area 1: every box is too tall; torchvision's fallback keeps the
    # full height with the widest allowed aspect, 4/3: width 133 of 300
    view = dataclasses.replace(ColourView(), scale=(1.0, 1.0))
    d = draw_colour_view(view, 8, 100, 300, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d.box_height, torch.ones(8))
    torch.testing.assert_close(d.box_width, torch.full((8,), 4 / 9))
    torch.testing.assert_close(d.position, torch.full((8, 2), 0.5))


def ramp_draws(flip: bool) -> ColourDraws:
    return ColourDraws(box_width=torch.tensor([0.5]), box_height=torch.tensor([0.25]),
                       position=torch.tensor([[1.0, 0.0]]), jitter=torch.tensor([False]),
                       factors=torch.ones(1, 4), order=torch.arange(4)[None],
                       grayscale=torch.tensor([False]), blur=torch.tensor([False]),
                       sigma=torch.ones(1), solarize=torch.tensor([False]),
                       flip=torch.tensor([flip]))


@pytest.mark.parametrize("flip", [False, True])
def test_the_crop_resamples_its_box_by_hand(flip):
    """On a 16 x 16 image whose red is x / 15 and green y / 15 (bilinear is exact on a
    ramp): the box of width 8 and height 4 px at the right edge, top. Output column j samples
    x = 8 + (j + 0.5) / 2 - 0.5, row i samples y = (i + 0.5) / 4 - 0.5, clamped into the image."""
    ramp = torch.arange(16, dtype=torch.float32) / 15
    image = torch.stack([ramp.expand(16, 16), ramp[:, None].expand(16, 16),
                         torch.full((16, 16), 0.5)])[None]
    out = apply_colour_view(image, ramp_draws(flip), IDENTITY)
    j = torch.arange(16, dtype=torch.float32)
    xs = (8 + (j + 0.5) / 2 - 0.5).clamp(0, 15) / 15
    ys = ((j + 0.5) / 4 - 0.5).clamp(0, 15) / 15
    torch.testing.assert_close(out[0, 0], (xs.flip(0) if flip else xs).expand(16, 16),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 1], ys[:, None].expand(16, 16), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 2], torch.full((16, 16), 0.5), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ the jitter
def naive_jitter(x: torch.Tensor, d: ColourDraws) -> torch.Tensor:
    """One sample at a time, the ops called in its drawn order: the reference for the batched
    version (which runs each op once per position on the samples that drew it there)."""
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    out = []
    for i in range(len(x)):
        y = x[i:i + 1]
        if d.jitter[i]:
            for op_index in d.order[i].tolist():
                y = ops[op_index](y, d.factors[i:i + 1, op_index])
        out.append(y)
    return torch.cat(out)


def test_the_batched_jitter_follows_each_samples_order_like_a_per_sample_loop():
    n = 30
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(n, 3, 6, 6, generator=gen)
    view = dataclasses.replace(IDENTITY, jitter_p=0.8)
    d = draw_colour_view(view, n, 6, 6, generator=gen)
    permutations = torch.tensor(list(itertools.permutations(range(4))))  # all 24 orders
    d = dataclasses.replace(d, order=permutations[torch.arange(n) % 24])
    assert 0 < int(d.jitter.sum()) < n
    out = apply_colour_view(x, d, view)
    torch.testing.assert_close(out, naive_jitter(x, d), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[~d.jitter], x[~d.jitter], atol=1e-6, rtol=0)
    # and the order matters: the same factors in reversed order give another image
    reversed_order = dataclasses.replace(d, order=d.order.flip(1))
    assert not torch.allclose(apply_colour_view(x, reversed_order, view)[d.jitter],
                              out[d.jitter], atol=1e-4)


# ------------------------------------------------------------------------------ the draws
def test_each_view_draws_its_own_probabilities_and_ranges():
    n = 20_000
    gen = torch.Generator().manual_seed(7)
    first, second = (draw_colour_view(view, n, 224, 224, generator=gen)
                     for view in MOCO_V3_VIEWS)
    for d, blur_p, solarize_p in ((first, 1.0, 0.0), (second, 0.1, 0.2)):
        assert within_binomial(d.flip, 0.5)
        assert within_binomial(d.jitter, 0.8)
        assert within_binomial(d.grayscale, 0.2)
        assert within_binomial(d.blur, blur_p)
        assert within_binomial(d.solarize, solarize_p)
        lows, highs = torch.tensor([0.6, 0.6, 0.8, -0.1]), torch.tensor([1.4, 1.4, 1.2, 0.1])
        assert ((d.factors >= lows) & (d.factors <= highs)).all()
        assert (d.factors.amin(0) < lows + 0.01).all() and (d.factors.amax(0) > highs - 0.01).all()
        assert ((d.sigma >= 0.1) & (d.sigma <= 2.0)).all()
        codes = (d.order * torch.tensor([64, 16, 4, 1])).sum(1)
        assert sorted(d.order[0].tolist()) == [0, 1, 2, 3] and codes.unique().numel() == 24
        for code in codes.unique():
            assert within_binomial(codes == code, 1 / 24)


def test_two_crops_runs_each_views_draws_in_order_and_white_shows_the_solarize_rates():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=gen)
    x1, x2 = two_crops(images, generator=torch.Generator().manual_seed(5), views=MOCO_V3_VIEWS,
                       normalise=False)
    replay = torch.Generator().manual_seed(5)
    pixels = images.float() / 255
    for out, view in zip((x1, x2), MOCO_V3_VIEWS):
        d = draw_colour_view(view, 8, 12, 12, generator=replay)
        assert torch.equal(out, apply_colour_view(pixels, d, view))
    # On white, every op but solarize keeps pixels >= 0.6 (brightness >= 0.6; contrast,
    # saturation, hue, grayscale and blur leave a constant white image white): a dark crop is
    # a solarised one. View 1 never solarises, view 2 a fifth of the time.
    white = torch.full((4000, 3, 4, 4), 255, dtype=torch.uint8)
    y1, y2 = two_crops(white, generator=torch.Generator().manual_seed(6), views=MOCO_V3_VIEWS,
                       normalise=False)
    assert y1.amin() >= 0.6 - 1e-6
    dark = y2.amax(dim=(1, 2, 3)) <= 0.4 + 1e-6
    assert ((y2.amin(dim=(1, 2, 3)) >= 0.6 - 1e-6) | dark).all()
    assert within_binomial(dark, 0.2)


def test_the_crops_are_deterministic_float32_in_range_and_draw_a_fixed_amount():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    other = torch.zeros_like(images)
    runs = []
    for batch, seed in ((images, 11), (images, 11), (images, 12), (other, 11)):
        gen = torch.Generator().manual_seed(seed)
        runs.append((*two_crops(batch, generator=gen, views=MOCO_V3_VIEWS, normalise=False),
                     gen.get_state()))
    (a1, a2, state_a), (b1, b2, state_b), (c1, _, _), (_, _, state_other) = runs
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and torch.equal(state_a, state_b)
    assert not torch.equal(a1, c1)
    assert torch.equal(state_a, state_other)  # the draws do not depend on the pixels
    for x in (a1, a2):
        assert x.shape == images.shape and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
    assert ((a1 - a2).abs().flatten(1).amax(1) > 0.05).all()


# ------------------------------------------------------------------------------ wiring, errors
def test_grey_images_keep_the_grayscale_pair_and_rgb_specs_get_moco_v3s():
    grey = moco_data.moco_views(0.2)
    assert grey == (CropView(scale=(0.2, 1.0)),
                    CropView(scale=(0.2, 1.0), blur_p=0.1, solarize_p=0.2))
    rgb = moco_data.moco_views(0.08, channels=3)
    assert rgb == MOCO_V3_VIEWS
    from reference_trainers.common.corpora import ImageSpec

    spec = ImageSpec("RGB", 16, moco_data.IMAGENET_MEAN, moco_data.IMAGENET_STD, 1)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    # a caller that built the grey pair (the shard-stream path) still gets MoCo v3's recipe
    via_grey = moco_data.spec_two_crops(images, spec, torch.Generator().manual_seed(0),
                                        moco_data.moco_views(0.08))
    direct = moco_data.spec_two_crops(images, spec, torch.Generator().manual_seed(0), rgb)
    assert all(torch.equal(a, b) for a, b in zip(via_grey, direct))
    raw = two_crops(images, generator=torch.Generator().manual_seed(0), views=rgb,
                    normalise=False)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    torch.testing.assert_close(direct[1], (raw[1] - mean) / std)


@pytest.mark.parametrize("change, named", [
    ({"jitter_p": 1.5}, "jitter_p=1.5"), ({"scale": (0.0, 1.0)}, "scale="),
    ({"ratio": (2.0, 1.0)}, "ratio="), ({"blur_sigma": (0.0, 2.0)}, "blur_sigma="),
    ({"hue": 0.7}, "hue=0.7"), ({"saturation": -1.0}, "saturation"),
    ({"crop_tries": 0}, "crop_tries=0")])
def test_a_view_out_of_range_is_a_clear_error(change, named):
    with pytest.raises(DataError, match=named):
        ColourView(**change)


def test_a_colour_view_refuses_images_that_are_neither_grey_nor_rgb():
    with pytest.raises(DataError, match="CropView"):
        two_crops(torch.zeros(2, 2, 8, 8, dtype=torch.uint8),
                  generator=torch.Generator().manual_seed(0), views=MOCO_V3_VIEWS)


def test_an_rgb_corpus_is_cropped_with_moco_v3s_recipe_and_a_grey_one_with_the_grey_pair(
        tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from reference_trainers.common.moco_config import MocoConfig

    for i, colour in enumerate(((255, 0, 0), (0, 128, 255), (30, 200, 90))):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.new("RGB", (10, 8), colour).save(tmp_path / "a" / f"{i}.png")
    for backbone, view_type, shape in (("vit_small", ColourView, (3, 3, 224, 224)),
                                       ("resnet", CropView, (3, 1, 28, 28))):
        cfg = MocoConfig(data=f"folder:{tmp_path}", backbone=backbone, crop_min=0.08)
        corpus = moco_data._corpus(cfg, 0, 1)
        assert all(type(view) is view_type for view in corpus.views)
        assert corpus.views[0].scale == (0.08, 1.0)
        x1, x2, ids = corpus.crops(torch.arange(3).numpy(), torch.Generator().manual_seed(0),
                                   torch.device("cpu"))
        assert x1.shape == x2.shape == shape and ids.tolist() == [0, 1, 2]
        assert torch.isfinite(x1).all() and torch.isfinite(x2).all()


@pytest.mark.parametrize("views, channels", [(augment.MOCO_VIEWS, 1), (MOCO_V3_VIEWS, 3)])
def test_an_empty_batch_gives_empty_crops_and_draws_nothing(views, channels):
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    x1, x2 = two_crops(torch.zeros(0, channels, 16, 16, dtype=torch.uint8), generator=gen,
                       views=views)
    assert x1.shape == x2.shape == (0, channels, 16, 16) and x1.dtype == torch.float32
    assert torch.equal(gen.get_state(), state)
