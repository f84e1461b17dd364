"""`python -m reference_trainers.export --format open_clip`: our RN50, RN101 and ViT-B-32 load
into open_clip's built-in configs with strict=True and give the same features and logits."""

import json

import pytest
import torch

open_clip = pytest.importorskip("open_clip", reason="needs make test-integration's venv")

from reference_trainers import export  # noqa: E402
from reference_trainers.models import build_clip  # noqa: E402

pytestmark = pytest.mark.integration


def _trained_looking(name: str) -> torch.nn.Module:
    """A preset with every parameter and BatchNorm statistic moved off its initial value, so a
    tensor mapped to the wrong place (or left at open_clip's init) changes the outputs."""
    torch.manual_seed(0)
    model = build_clip(name)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.normal_(1.0, 0.1)
        model.logit_scale.fill_(3.0)
    return model.eval()


@pytest.mark.parametrize("name", export.MODELS)
def test_exported_checkpoint_loads_strictly_and_gives_the_same_logits(name, tmp_path):
    ours = _trained_looking(name)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": name}))
    torch.save({"epoch": 3, "model": ours.state_dict()}, run / "checkpoints" / "epoch_00000003.pt")
    out = tmp_path / "exported.pt"
    assert export.main(["--format", "open_clip", "--checkpoint", str(run), "--out", str(out)]) == 0

    theirs = open_clip.create_model(name).eval()
    missing, unexpected = theirs.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert not missing and not unexpected
    torch.manual_seed(1)
    images = torch.randn(3, 3, 224, 224)
    tokens = open_clip.get_tokenizer(name)(["a photo of a shoe", "a bag", "a striped shirt"])
    with torch.no_grad():
        image_a, text_a, scale_a = ours(images, tokens)
        image_b, text_b, scale_b = theirs(images, tokens)
    assert scale_a.item() == pytest.approx(scale_b.item(), rel=1e-6)
    assert torch.allclose(image_a, image_b, atol=1e-5)
    assert torch.allclose(text_a, text_b, atol=1e-5)
    logits_a, logits_b = scale_a * image_a @ text_a.T, scale_b * image_b @ text_b.T
    assert torch.allclose(logits_a, logits_b, atol=1e-4)
    # and open_clip's own loader takes the file as `pretrained`
    loaded = open_clip.create_model(name, pretrained=str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(tokens, normalize=True), text_b)
