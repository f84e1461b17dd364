"""Export a reference CLIP checkpoint for open_clip.

    python -m reference_trainers.export --format open_clip --checkpoint runs/vit-b-32 \\
        --out vit-b-32-scan.pt
    # then, with open-clip-torch installed:
    #   model = open_clip.create_model("ViT-B-32", pretrained="vit-b-32-scan.pt")

--checkpoint takes a run folder of `python -m reference_trainers.clip` (its newest
checkpoint, and the model name from its config.json) or one checkpoint file (then --model
names the preset). The output is a plain state_dict with open_clip's names and layouts for
its built-in config of the same name (RN50, RN101, ViT-B-32): `create_model(name)` loads it
with strict=True and gives the same logits on the same inputs (tests/integration).

Only the GPU presets trained with CLIP's BPE tokenizer (vocabulary 49,408, context 77, <eot>
the largest id, as open_clip's text tower pools at the argmax token) map onto open_clip; other
runs are refused with the reason. The logit scale is exported capped at log(100), the cap our
model applies in its forward and open_clip's trainer applies to the parameter.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from reference_trainers.common.errors import TrainerError

__all__ = ["ExportError", "FORMATS", "MODELS", "load_reference", "main", "to_open_clip"]

FORMATS = ("open_clip",)
MODELS = ("RN50", "RN101", "ViT-B-32")
VOCAB_SIZE, CONTEXT_LENGTH = 49408, 77  # CLIP's BPE, as open_clip's built-in configs assume


class ExportError(TrainerError, ValueError):
    """A checkpoint that cannot be exported in the asked format."""


_BLOCK = {"ln_attn": "ln_1", "qkv.weight": "attn.in_proj_weight",
          "qkv.bias": "attn.in_proj_bias", "out": "attn.out_proj", "ln_mlp": "ln_2",
          "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj"}
_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
_BRANCH = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "7": "conv3", "8": "bn3"}
_SHORTCUT = {"1": "downsample.0", "2": "downsample.1"}


def _block(rest: str) -> str:
    for ours, theirs in _BLOCK.items():
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    raise ExportError(f"unexpected transformer block parameter {rest!r}")  # _rename names the key


def _rename(key: str) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Our parameter name -> (open_clip's name, layout change)."""
    same: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # noqa: E731
    transpose: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.T.contiguous()  # noqa: E731
    rules: list[tuple[str, Callable[[re.Match[str]], str], Callable]] = [
        (r"text\.(token_embedding\.weight|positional_embedding|ln_final\..+)",
         lambda m: m[1], same),
        (r"text\.blocks\.(\d+)\.(.+)", lambda m: f"transformer.resblocks.{m[1]}.{_block(m[2])}",
         same),
        (r"text\.proj\.weight", lambda m: "text_projection", transpose),
        (r"visual\.cls_token", lambda m: "visual.class_embedding", lambda t: t.reshape(-1)),
        (r"visual\.pos_embed", lambda m: "visual.positional_embedding", lambda t: t[0]),
        (r"visual\.patch_embed\.weight", lambda m: "visual.conv1.weight", same),
        (r"visual\.(ln_pre\..+)", lambda m: f"visual.{m[1]}", same),
        (r"visual\.blocks\.(\d+)\.(.+)",
         lambda m: f"visual.transformer.resblocks.{m[1]}.{_block(m[2])}", same),
        (r"visual\.norm\.(.+)", lambda m: f"visual.ln_post.{m[1]}", same),
        (r"visual\.proj\.weight", lambda m: "visual.proj", transpose),
        (r"visual\.stem\.(\d+)\.(.+)", lambda m: f"visual.{_STEM[m[1]]}.{m[2]}", same),
        (r"visual\.stages\.(\d+)\.(\d+)\.branch\.(\d+)\.(.+)",
         lambda m: f"visual.layer{int(m[1]) + 1}.{m[2]}.{_BRANCH[m[3]]}.{m[4]}", same),
        (r"visual\.stages\.(\d+)\.(\d+)\.shortcut\.(\d+)\.(.+)",
         lambda m: f"visual.layer{int(m[1]) + 1}.{m[2]}.{_SHORTCUT[m[3]]}.{m[4]}", same),
        (r"visual\.(attnpool\..+)", lambda m: f"visual.{m[1]}", same),
        (r"logit_scale", lambda m: "logit_scale",
         lambda t: t.clamp(max=math.log(100))),
    ]
    for pattern, name, change in rules:
        match = re.fullmatch(pattern, key)
        if match:
            try:
                return name(match), change
            except (ExportError, KeyError):
                break
    raise ExportError(f"parameter {key!r} has no open_clip counterpart: only the GPU presets "
                      f"{', '.join(MODELS)} export to open_clip (not the cpu preset's CLIP).")


def to_open_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our CLIP's state_dict (reference_trainers.models.build_clip) in open_clip's names and
    layouts. Checks the text tower against CLIP's BPE tokenizer (what open_clip's built-in
    configs are built for)."""
    embedding = state_dict.get("text.token_embedding.weight")
    positions = state_dict.get("text.positional_embedding")
    if embedding is None or positions is None:
        raise ExportError("the checkpoint holds no CLIP text tower (text.token_embedding); "
                          "pass a checkpoint of python -m reference_trainers.clip.")
    if embedding.shape[0] != VOCAB_SIZE or positions.shape[0] != CONTEXT_LENGTH:
        raise ExportError(
            f"the run's text tower has a vocabulary of {embedding.shape[0]} and a context of "
            f"{positions.shape[0]}; open_clip's configs need CLIP's BPE tokenizer "
            f"({VOCAB_SIZE} tokens, context {CONTEXT_LENGTH}): train with that tokenizer.")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name, change = _rename(key)
        out[name] = change(value.detach().cpu())
    return out


def load_reference(path: str | Path, model: str | None = None
                   ) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, model name) of a run folder (newest checkpoint) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        checkpoints = sorted((path / "checkpoints").glob("epoch_*.pt"))
        if not checkpoints:
            raise ExportError(f"{path} holds no checkpoints/epoch_*.pt; pass a run folder of "
                              "python -m reference_trainers.clip or a checkpoint file.")
        config = path / "config.json"
        if model is None and config.exists():
            model = json.loads(config.read_text()).get("model")
        path = checkpoints[-1]
    elif not path.is_file():
        raise ExportError(f"--checkpoint {str(path)!r} is neither a run folder nor a file.")
    if model not in MODELS:
        raise ExportError(f"model {model!r}: open_clip export supports {', '.join(MODELS)}; "
                          "pass --model (a run folder's config.json names it).")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ExportError(f"{path} is not a checkpoint of python -m reference_trainers.clip "
                          "(a dict with 'model', or a state_dict).")
    return state, model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_trainers.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--checkpoint", required=True, help="run folder or checkpoint file")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="preset name (default: the run's config.json)")
    parser.add_argument("--out", required=True, help="file to write the state_dict to")
    args = parser.parse_args(argv)
    try:
        state, model = load_reference(args.checkpoint, args.model)
        exported = to_open_clip(state)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.save(exported, args.out)
    print(json.dumps({"format": args.format, "model": model, "out": args.out,
                      "tensors": len(exported)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
