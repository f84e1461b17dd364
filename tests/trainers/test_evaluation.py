"""Zero-shot classifier and top-1, feature extraction, and the linear probe, on synthetic
features whose answer is known."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_trainers.common.evaluation import (
    extract_features, linear_probe_top1, zero_shot_classifier, zero_shot_top1)


def test_zero_shot_top1_is_one_on_the_prototypes_themselves():
    prototypes = F.normalize(torch.randn(10, 16, generator=torch.Generator().manual_seed(0)))
    labels = torch.arange(10).repeat(5)
    assert zero_shot_top1(prototypes[labels], labels, prototypes) == 1.0
    assert zero_shot_top1(prototypes[labels].numpy(), labels.numpy(), prototypes.numpy()) == 1.0


def test_zero_shot_top1_is_near_chance_on_random_features():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(5000, 16)), rng.integers(0, 10, 5000)
    classifier = rng.normal(size=(10, 16))
    assert abs(zero_shot_top1(features, labels, classifier) - 0.1) < 0.03


def test_zero_shot_classifier_averages_normalised_prompts_and_renormalises():
    # A "text encoder" that returns the token rows as features: prompts are their own vectors.
    vectors = {"a": [3, 0], "b": [0, 2], "c": [-1, 0]}  # int64 token ids

    def tokenize(prompts):
        return np.array([vectors[p] for p in prompts])

    classifier = zero_shot_classifier(lambda tokens: tokens.float(), [["a", "b"], ["c"]],
                                      tokenize)
    expected = F.normalize(torch.tensor([[1.0, 1.0], [-1.0, 0.0]]))
    torch.testing.assert_close(classifier, expected)


def test_zero_shot_classifier_with_a_clip_model_classifies_its_own_prompts():
    from reference_trainers.clip.model import build_cpu_clip

    torch.manual_seed(0)
    model = build_cpu_clip(vocab_size=20, eot_id=2, embed_dim=16).eval()
    prompts = [[f"{c} {t}" for t in range(3)] for c in range(4)]

    def tokenize(texts):  # "class template" -> <sot> class+4 template+10 <eot> pad...
        rows = [[1, 4 + int(t.split()[0]), 10 + int(t.split()[1]), 2] + [0] * 20 for t in texts]
        return np.array(rows, dtype=np.int64)

    classifier = zero_shot_classifier(model.encode_text, prompts, tokenize)
    assert classifier.shape == (4, 16)
    torch.testing.assert_close(classifier.norm(dim=1), torch.ones(4))


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.frozen = nn.Dropout(0.5)

    def encode_image(self, images):
        return self.frozen(self.norm(images))


def test_extract_features_keeps_order_and_restores_each_modules_mode():
    encoder = _Encoder().train()
    encoder.frozen.eval()
    images = torch.randn(10, 4)
    features = extract_features(encoder.encode_image, images, batch_size=3)
    assert features.shape == (10, 4) and not features.requires_grad
    # eval-mode BatchNorm with fresh running stats is (x - 0) / sqrt(1 + eps): identity-ish,
    # and the same batch by batch as at once (in train mode it would differ per batch).
    torch.testing.assert_close(features, images / (1 + 1e-5) ** 0.5)
    assert encoder.training and encoder.norm.training and not encoder.frozen.training


def test_extract_features_restores_mode_after_an_error():
    encoder = _Encoder().train()
    with pytest.raises(RuntimeError):
        extract_features(encoder.encode_image, torch.randn(3, 5))
    assert encoder.training and encoder.norm.training


def test_extract_features_takes_numpy_a_preprocess_and_a_plain_function():
    images = np.arange(12, dtype=np.uint8).reshape(6, 2)
    features = extract_features(lambda x: x * 2, images, batch_size=4,
                                preprocess=lambda b: b.float() / 2)
    torch.testing.assert_close(features, torch.from_numpy(images).float())
    # an encoder returning numpy (e.g. a JAX model behind a wrapper) works too
    features = extract_features(lambda x: x.numpy() + 1, images.astype(np.float32))
    torch.testing.assert_close(features, torch.from_numpy(images).float() + 1)


def _separable(seed, n_train=3000, n_test=1000, classes=5, dim=32):
    """Gaussian clusters with well-separated means, shifted and scaled per dimension."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * 3
    labels = rng.integers(0, classes, n_train + n_test)
    features = (means[labels] + rng.normal(size=(len(labels), dim))) * 50 + 7
    return (features[:n_train], labels[:n_train], features[n_train:], labels[n_train:])


def test_linear_probe_separates_linearly_separable_classes():
    assert linear_probe_top1(*_separable(0), num_classes=5) > 0.95


def test_linear_probe_accepts_tensors_and_is_deterministic_for_a_seed():
    data = _separable(1, classes=10)
    tensors = [torch.as_tensor(a) for a in data]
    first = linear_probe_top1(*data, num_classes=10, epochs=5, seed=3)
    assert linear_probe_top1(*tensors, num_classes=10, epochs=5, seed=3) == first


def test_linear_probe_is_near_chance_on_noise():
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(4000, 8)), rng.integers(0, 4, 4000)
    accuracy = linear_probe_top1(features[:3000], labels[:3000], features[3000:],
                                 labels[3000:], num_classes=4)
    assert abs(accuracy - 0.25) < 0.06


def test_module_docstring_example_runs():
    import doctest

    import reference_trainers.common.evaluation as module

    assert doctest.testmod(module, raise_on_error=True).attempted > 0


def _naive_knn_top1(train, train_labels, test, test_labels, k, num_classes=10):
    """The kNN monitor written plainly: full sort per test row, votes summed in a loop."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    for row, label in zip(test, test_labels):
        sims = train @ row
        votes = np.zeros(num_classes)
        for j in np.argsort(-sims)[:k]:
            votes[train_labels[j]] += np.exp(sims[j] / 0.07)
        correct += int(votes.argmax() == label)
    return correct / len(test)


@pytest.mark.parametrize("k,chunk", [(20, 1024), (5, 7), (1, 50), (500, 64)])
def test_knn_top1_matches_a_naive_reference(k, chunk):
    """One kNN serves the PyTorch and JAX MoCo trainers (common/eval_maths.py); its chunked,
    argpartition-based votes equal a plain full-sort reference, also on torch tensors."""
    from reference_trainers.common.eval_maths import knn_top1

    rng = np.random.default_rng(k)
    centres = rng.standard_normal((10, 16))
    labels = rng.integers(0, 10, 600)
    features = (centres[labels] + 1.5 * rng.standard_normal((600, 16))).astype(np.float32)
    expected = _naive_knn_top1(features[:400], labels[:400], features[400:], labels[400:], k)
    got = knn_top1(features[:400], labels[:400], features[400:], labels[400:], k=k, chunk=chunk)
    assert 0.3 < got == pytest.approx(expected, abs=1e-12)
    as_tensors = knn_top1(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (
        features[:400], labels[:400], features[400:], labels[400:])), k=k, chunk=chunk)
    assert as_tensors == got


@pytest.mark.parametrize("size,rgb", [(28, False), (40, True), (17, True)])
def test_fashion_mnist_reaches_a_spec_tower_as_a_decoded_image_would(size, rgb):
    """Evaluation of a GPU preset on Fashion-MNIST (both trainers: torch_data.resize_to_spec):
    the test images resized to the spec's size, rounded to uint8 levels, then exactly what
    ImageSpec.prepare makes of a decoded uint8 image."""
    from reference_trainers.common.corpora import ImageSpec
    from reference_trainers.common.torch_data import resize_to_spec

    spec = ImageSpec.gpu(size) if rgb else ImageSpec.cpu()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(size))
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                            align_corners=False).clamp(0, 255).round().to(torch.uint8)
    expected = spec.prepare(resized.repeat(1, spec.channels, 1, 1), augment=False,
                            generator=None)
    got = resize_to_spec(spec)(images)
    assert got.shape == (3, spec.channels, size, size) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_both_trainers_evaluate_a_gpu_preset_through_its_spec():
    from reference_trainers.clip import train as clip_train
    from reference_trainers.common.config import TrainConfig
    from reference_trainers.common.moco_config import MocoConfig
    from reference_trainers.common.torch_data import normalise
    from reference_trainers.moco import data as moco_data

    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    clip_gpu = clip_train.eval_preprocess(TrainConfig(model="RN50"))(images)
    assert clip_gpu.shape == (2, 3, 224, 224)
    moco_gpu = moco_data.eval_preprocess(MocoConfig(backbone="vit_small", data="folder:x"))
    assert moco_gpu(images).shape == (2, 3, 224, 224)
    assert clip_train.eval_preprocess(TrainConfig()) is normalise
    assert moco_data.eval_preprocess(MocoConfig(backbone="vit_small")) is normalise
