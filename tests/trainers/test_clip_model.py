"""The cpu-preset CLIP: shapes, normalisation, the <eot> read-out and causal mask, the logit
scale cap, the model contract, and that a gradient step lowers the CLIP loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_trainers.clip.model import (
    CLIP, ImageCNN, TextTransformer, build_cpu_clip, check_clip_model)

VOCAB, EOT, CONTEXT = 50, 2, 24


def _tokens(batch: int, eot_at: list[int], seed: int = 0) -> torch.Tensor:
    """(batch, CONTEXT) int64: random words, <eot> at eot_at[i], pad (0) after it."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (batch, CONTEXT), generator=generator)
    for row, position in enumerate(eot_at):
        tokens[row, position] = EOT
        tokens[row, position + 1:] = 0
    return tokens


@pytest.fixture
def model() -> CLIP:
    torch.manual_seed(0)
    return build_cpu_clip(VOCAB, EOT, context_length=CONTEXT, embed_dim=32).eval()


def test_encoders_return_unit_rows_of_embed_dim(model):
    images, tokens = torch.randn(5, 1, 28, 28), _tokens(5, [3, 7, 23, 1, 10])
    image_features, text_features, scale = model(images, tokens)
    assert image_features.shape == text_features.shape == (5, 32)
    assert image_features.dtype == text_features.dtype == torch.float32
    torch.testing.assert_close(image_features.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(text_features.norm(dim=1), torch.ones(5))
    assert scale.shape == () and float(scale.detach()) == pytest.approx(1 / 0.07, rel=1e-5)


def test_image_tower_shapes_for_other_widths():
    tower = ImageCNN(in_channels=3, width=8, embed_dim=16)
    assert tower(torch.randn(2, 3, 28, 28)).shape == (2, 16)


def test_eot_position_is_first_eot_else_last_column():
    text = TextTransformer(VOCAB, context_length=8, width=16, heads=2, embed_dim=8, eot_id=EOT)
    tokens = torch.tensor([[1, 5, 2, 0, 0, 0, 0, 0], [1, 2, 7, 2, 0, 0, 0, 0],
                           [1, 5, 6, 7, 8, 9, 10, 11]])
    assert text.eot_positions(tokens).tolist() == [2, 1, 7]


def test_tokens_after_eot_change_nothing(model):
    tokens = _tokens(4, [3, 7, 12, 20])
    changed = tokens.clone()
    for row, position in enumerate([3, 7, 12, 20]):
        changed[row, position + 1:] = torch.randint(3, VOCAB, (CONTEXT - position - 1,))
    torch.testing.assert_close(model.encode_text(changed), model.encode_text(tokens))


def test_a_rows_features_do_not_depend_on_its_batch(model):
    short, long = _tokens(1, [4], seed=1), _tokens(1, [22], seed=2)
    alone = model.encode_text(short)
    together = model.encode_text(torch.cat([short, long]))[:1]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert model.encode_text(short[:0]).shape == (0, 32)


def test_tokens_before_eot_change_the_features(model):
    tokens = _tokens(1, [10])
    changed = tokens.clone()
    changed[0, 4] = 3 if int(tokens[0, 4]) != 3 else 4
    assert not torch.allclose(model.encode_text(changed), model.encode_text(tokens))


def test_causal_mask_hides_later_tokens_from_earlier_positions(model):
    text = model.text
    tokens = _tokens(2, [20, 20])
    changed = tokens.clone()
    changed[:, 12] = torch.where(tokens[:, 12] == 3, 4, 3)

    def hidden(t):
        x = text.token_embedding(t) + text.positional_embedding[: t.shape[1]]
        for block in text.blocks:
            x = block(x)
        return x

    before, after = hidden(tokens), hidden(changed)
    torch.testing.assert_close(after[:, :12], before[:, :12])
    assert not torch.allclose(after[:, 12:], before[:, 12:])


def test_tokens_longer_than_context_raise():
    text = TextTransformer(VOCAB, context_length=8, width=16, heads=2, eot_id=EOT)
    with pytest.raises(ValueError, match="context_length=8"):
        text(torch.zeros(1, 9, dtype=torch.int64))


def test_width_not_divisible_by_heads_raises():
    with pytest.raises(ValueError, match="heads=3"):
        TextTransformer(VOCAB, width=16, heads=3, eot_id=EOT)


def test_logit_scale_is_clamped_at_max(model):
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
        assert float(model.logit_scale_value()) == pytest.approx(100.0)
        assert float(model(torch.randn(1, 1, 28, 28), _tokens(1, [3]))[2]) == pytest.approx(100.0)
        model.logit_scale.fill_(math.log(20.0))
        assert float(model.logit_scale_value()) == pytest.approx(20.0)


def test_check_clip_model_accepts_ours_and_duck_types(model):
    check_clip_model(model)

    class Other(nn.Module):  # an open_clip-like model: only the methods and the parameter
        logit_scale = nn.Parameter(torch.tensor(1.0))

        def encode_image(self, images): ...

        def encode_text(self, tokens): ...

    check_clip_model(Other())


@pytest.mark.parametrize("missing", ["encode_image", "encode_text"])
def test_check_clip_model_names_missing_method(missing):
    class Partial:
        logit_scale = torch.tensor(1.0)

        def encode_image(self, images): ...

        def encode_text(self, tokens): ...

    setattr(Partial, missing, None)
    with pytest.raises(TypeError, match=f"lacks {missing}"):
        check_clip_model(Partial())


def test_check_clip_model_names_both_methods_and_the_logit_scale():
    with pytest.raises(TypeError, match="lacks encode_image and encode_text"):
        check_clip_model(nn.Linear(2, 2))

    class NoScale:
        def encode_image(self, images): ...

        def encode_text(self, tokens): ...

    with pytest.raises(TypeError, match="logit_scale"):
        check_clip_model(NoScale())


def _clip_loss(image_features, text_features, scale):
    logits = scale * image_features @ text_features.T
    targets = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def test_gradient_steps_lower_the_clip_loss():
    torch.manual_seed(0)
    model = build_cpu_clip(VOCAB, EOT, context_length=CONTEXT, embed_dim=32).train()
    images, tokens = torch.randn(16, 1, 28, 28), _tokens(16, list(range(2, 18)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = _clip_loss(*model(images, tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < losses[0] - 0.1, losses


def test_module_docstring_example_runs():
    import doctest

    import reference_trainers.clip.model as module

    assert doctest.testmod(module, raise_on_error=True).attempted > 0
