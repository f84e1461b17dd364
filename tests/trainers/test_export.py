"""reference_trainers.export without open_clip: the renaming is one to one, and what cannot
load into open_clip is refused with the reason (tests/integration loads the result into
open_clip itself)."""

import json

import pytest
import torch

from reference_trainers import export
from reference_trainers.clip.model import build_cpu_clip
from reference_trainers.models import build_clip


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_every_tensor_gets_its_own_open_clip_name_and_layout(name):
    state = build_clip(name).state_dict()
    out = export.to_open_clip(state)
    assert len(out) == len(state)  # no two of ours land on one name
    assert sum(t.numel() for t in out.values()) == sum(t.numel() for t in state.values())
    assert torch.equal(out["text_projection"], state["text.proj.weight"].T)
    assert out["token_embedding.weight"].shape == (49408, 512)
    if name == "ViT-B-32":
        assert out["visual.class_embedding"].shape == (768,)
        assert out["visual.positional_embedding"].shape == (50, 768)
        assert torch.equal(out["visual.transformer.resblocks.11.attn.in_proj_weight"],
                           state["visual.blocks.11.qkv.weight"])
    else:
        assert torch.equal(out["visual.layer4.2.bn3.running_var"],
                           state["visual.stages.3.2.branch.8.running_var"])
        assert torch.equal(out["visual.layer2.0.downsample.0.weight"],
                           state["visual.stages.1.0.shortcut.1.weight"])


def test_the_logit_scale_is_capped_as_our_forward_caps_it():
    state = {"logit_scale": torch.tensor(9.0), "text.token_embedding.weight": torch.zeros(49408, 1),
             "text.positional_embedding": torch.zeros(77, 1)}
    assert export.to_open_clip(state)["logit_scale"].item() == pytest.approx(4.60517, abs=1e-5)


def test_runs_open_clip_cannot_load_are_refused_with_the_reason(tmp_path, capsys):
    with pytest.raises(export.ExportError, match="vocabulary of 1000.*CLIP's BPE"):
        export.to_open_clip(build_clip("ViT-B-32", vocab_size=1000, eot_id=999).state_dict())
    cpu = build_cpu_clip(vocab_size=49408, eot_id=49407, context_length=77).state_dict()
    with pytest.raises(export.ExportError, match="visual.blocks.0.0.weight.*RN50, RN101, ViT-B-32"):
        export.to_open_clip(cpu)
    with pytest.raises(export.ExportError, match="no CLIP text tower"):
        export.to_open_clip({"visual.proj.weight": torch.zeros(2, 2)})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(export.ExportError, match="no checkpoints/epoch_"):
        export.load_reference(run)
    torch.save({"model": {}}, run / "checkpoints" / "epoch_00000001.pt")
    (run / "config.json").write_text(json.dumps({"model": "cpu"}))
    assert export.main(["--format", "open_clip", "--checkpoint", str(run), "--out",
                        str(tmp_path / "x.pt")]) == 2
    assert "model 'cpu'" in capsys.readouterr().err
    with pytest.raises(export.ExportError, match="neither a run folder nor a file"):
        export.load_reference(tmp_path / "nowhere", "RN50")
