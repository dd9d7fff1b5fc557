"""The Attention Branch Network (ABN; Fukui et al., "Attention Branch Network: Learning of Attention Mechanism
for Visual Explanation", CVPR 2019) over any backbone of :func:`impactx.models.create_backbone`.

The backbone's spatial trunk (:func:`impactx.models.stages.spatial_stages`) is split after stage ``s``; its
output ``f [B,C_s,h,w]`` feeds

- the *attention branch*: a deep copy of stage ``s+1`` -> BatchNorm -> 1x1 conv to ``K`` channels ->
  BatchNorm -> ReLU, then (a) a 1x1 conv ``K -> K`` and global average pooling: the attention logits
  ``[B,K]``; (b) a ``K -> 1`` conv (kernel ``attention_kernel``) -> BatchNorm -> sigmoid: the attention map
  ``att [B,1,h,w]`` in ``[0,1]``;
- the *perception branch*: ``f' = f * att + f`` through the rest of the backbone (stage ``s+1`` onward, its
  pooling and fully connected layers, the linear head): the perception logits ``[B,K]``.

What deliberately differs from the official (ResNet-only) code:

- any backbone with discoverable stages (LeNet-5, timm and torchvision families), split at any stage but the
  last (``attention_stage``, default ``-2``: the official split before ``layer4``);
- global average pooling is adaptive (the official code hard-codes ``AvgPool2d`` for 32x32 or 224x224 input),
  so any input size works;
- the copied stage keeps its stride (the official ``att_layer4`` is rebuilt with stride 1): when it
  downsamples, ``att`` is resized bilinearly to ``f``'s ``(h, w)`` before ``f * att + f``; the copy also
  starts from the backbone's weights (pretrained ones too) and runs its activations out of place (it reads
  ``f``, which the perception branch still needs);
- the network keeps no per-call state (the official code stores ``self.att``): the split is a forward hook
  on stage ``s``'s output module, registered for one call of the backbone's own forward and removed after it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from impactx.core import check_int, eval_mode
from impactx.models.backbone import Backbone
from impactx.models.stages import SpatialStage, spatial_stages

__all__ = ["AbnOutput", "AttentionBranch", "AttentionBranchNetwork", "check_attention_kernel", "resolve_attention_stage"]


class AbnOutput(NamedTuple):
    """The outputs of one ABN forward pass over ``B`` images (``K`` classes).

    Attributes:
        perception_logits: ``[B,K]``, the perception branch's logits (what ``forward`` returns).
        attention_logits: ``[B,K]``, the attention branch's logits (trained with their own cross-entropy).
        attention_map: ``[B,1,h,w]`` in ``[0,1]`` at the resolution of the attended stage's output.
    """

    perception_logits: torch.Tensor
    attention_logits: torch.Tensor
    attention_map: torch.Tensor


def check_attention_kernel(value: object) -> int:
    """``attention_kernel`` as an int when it is a positive odd int (so ``padding = k // 2`` keeps the size)."""
    kernel = check_int("attention_kernel", value)
    if kernel % 2 == 0:
        raise ValueError(f"attention_kernel must be a positive odd int (padding k//2 keeps the size), got {kernel}")
    return kernel


def resolve_attention_stage(attention_stage: object, stages: tuple[SpatialStage, ...], backbone: str = "") -> int:
    """The non-negative index of ``attention_stage`` (Python indexing into ``stages``); the last stage cannot
    be chosen, since the attention branch copies the stage after the chosen one."""
    n = len(stages)
    names = ", ".join(stage.output for stage in stages)
    if isinstance(attention_stage, bool) or not isinstance(attention_stage, int):
        raise ValueError(f"attention_stage must be an int (Python index into the stages), got {attention_stage!r}")
    index = attention_stage + n if attention_stage < 0 else attention_stage
    if n < 2 or not 0 <= index < n - 1:
        valid = f"{_span(0, n - 2)} or {_span(-n, -2)}" if n >= 2 else "none (fewer than two stages)"
        raise ValueError(
            f"attention_stage={attention_stage} is not valid for backbone {backbone or '?'!r} with {n} spatial "
            f"stages ({names}): the attention branch copies the next stage, so the last one cannot be chosen; "
            f"valid values: {valid}"
        )
    return index


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}..{last}"


def _outplace(module: nn.Module) -> nn.Module:
    """Turn off every ``inplace`` flag (ReLU, SiLU, ... ) in ``module``; returns it."""
    for sub in module.modules():
        if isinstance(getattr(sub, "inplace", None), bool):
            sub.inplace = False
    return module


def _probe_next_channels(backbone: Backbone, stage: SpatialStage, next_stage: nn.Module) -> int:
    """Run ``backbone`` once (eval mode, no gradients, a zero image of its input size) to check that ``stage``
    runs once per forward with a feature map ``[B,C,h,w]`` as output; return the channels ``next_stage``
    (the copy of the stage after it) makes of that map."""
    weight = next(backbone.parameters())
    probe = torch.zeros(1, backbone.in_chans, backbone.input_size, backbone.input_size,
                        dtype=weight.dtype, device=weight.device)
    outputs: list[object] = []
    handle = backbone.features.get_submodule(stage.output).register_forward_hook(
        lambda module, inputs, output: outputs.append(output)
    )
    try:
        with torch.no_grad(), eval_mode(backbone), eval_mode(next_stage):
            backbone(probe)
            if len(outputs) != 1 or not isinstance(outputs[0], torch.Tensor) or outputs[0].dim() != 4:
                found = ", ".join(str(list(getattr(out, "shape", ()))) for out in outputs) or "none"
                raise ValueError(
                    f"stage {stage.output!r} of backbone {backbone.name or '?'!r} must run once per forward and "
                    f"output a feature map [B,C,h,w]; it gave {len(outputs)} output(s) of shape {found}"
                )
            after = next_stage(outputs[0])
    finally:
        handle.remove()
    if not isinstance(after, torch.Tensor) or after.dim() != 4:
        raise ValueError(
            f"the stage after {stage.output!r} of backbone {backbone.name or '?'!r} must output a feature map "
            f"[B,C,h,w], got {list(getattr(after, 'shape', ()))}"
        )
    return int(after.shape[1])


class AttentionBranch(nn.Module):
    """``f [B,C_s,h,w]`` -> ``(attention logits [B,K], attention map [B,1,h,w] in [0,1])``.

    Args:
        next_stage: a copy of the backbone's stage after the attended one, ``[B,C_s,h,w] -> [B,C',h',w']``.
        next_channels: ``C'``, the channels ``next_stage`` outputs.
        num_classes: ``K``.
        kernel: the attention map convolution's (odd) kernel size.
    """

    def __init__(self, next_stage: nn.Module, next_channels: int, num_classes: int, kernel: int = 3) -> None:
        super().__init__()
        kernel = check_attention_kernel(kernel)
        self.next_stage = next_stage
        self.norm = nn.BatchNorm2d(next_channels)
        self.to_classes = nn.Conv2d(next_channels, num_classes, kernel_size=1, bias=False)
        self.norm_classes = nn.BatchNorm2d(num_classes)
        self.classifier = nn.Conv2d(num_classes, num_classes, kernel_size=1, bias=False)
        self.map_conv = nn.Conv2d(num_classes, 1, kernel_size=kernel, padding=kernel // 2, bias=False)
        self.map_norm = nn.BatchNorm2d(1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features [B,C_s,h,w]`` -> ``(logits [B,K], attention [B,1,h,w])``; the map is computed at the
        copied stage's ``(h',w')`` and resized bilinearly to ``(h,w)`` when they differ."""
        x = F.relu(self.norm_classes(self.to_classes(self.norm(self.next_stage(features)))))
        logits = F.adaptive_avg_pool2d(self.classifier(x), 1).flatten(1)
        attention = torch.sigmoid(self.map_norm(self.map_conv(x)))
        if attention.shape[-2:] != features.shape[-2:]:
            attention = F.interpolate(attention, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return logits, attention


class AttentionBranchNetwork(nn.Module):
    """ABN over a :class:`~impactx.models.backbone.Backbone` (see the module docstring); self-explaining.

    ``forward(x [B,C,H,W]) -> perception logits [B,K]``; :meth:`forward_branches` gives both branches'
    logits and the attention map; :meth:`explain` gives the attention map at the input's resolution.

    Args:
        backbone: the perception branch (its weights are used as they are; stage ``s+1`` is deep-copied into
            the attention branch at construction).
        attention_stage: Python index into ``spatial_stages(backbone)`` of the stage whose output is attended
            (any but the last); ``-2`` attends the second-to-last stage, as the official code.
        attention_kernel: odd kernel size of the ``K -> 1`` attention map convolution (official: 3).

    Attributes:
        stages: the backbone's spatial stages; ``stage``: the attended one (``stages[attention_stage]``).
    """

    explain_needs_grad = False

    def __init__(self, backbone: Backbone, attention_stage: int = -2, attention_kernel: int = 3) -> None:
        super().__init__()
        kernel = check_attention_kernel(attention_kernel)
        self.stages = spatial_stages(backbone)
        self.attention_stage = resolve_attention_stage(attention_stage, self.stages, backbone.name)
        self.stage = self.stages[self.attention_stage]
        next_stage = _outplace(self.stages[self.attention_stage + 1].copy(backbone.features))
        next_channels = _probe_next_channels(backbone, self.stage, next_stage)
        self.backbone = backbone
        self.attention_branch = AttentionBranch(next_stage, next_channels, backbone.num_classes, kernel)

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def in_chans(self) -> int:
        return self.backbone.in_chans

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    @property
    def backbone_name(self) -> str:
        return self.backbone.name or "?"

    def forward_branches(self, x: torch.Tensor) -> AbnOutput:
        """``x [B,C,H,W]`` -> :class:`AbnOutput` (perception logits ``[B,K]``, attention logits ``[B,K]``,
        attention map ``[B,1,h,w]``): one pass of the backbone with stage ``s``'s output ``f`` replaced by
        ``f * att + f``, where ``(attention logits, att) = attention_branch(f)``."""
        found: list[tuple[torch.Tensor, torch.Tensor]] = []

        def attend(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
            if found:
                raise RuntimeError(f"stage {self.stage.output!r} ran twice in one forward of {self.backbone_name!r}")
            attention_logits, attention = self.attention_branch(output)
            found.append((attention_logits, attention))
            return output * attention + output

        handle = self.backbone.features.get_submodule(self.stage.output).register_forward_hook(attend)
        try:
            perception_logits = self.backbone(x)
        finally:
            handle.remove()
        if not found:
            raise RuntimeError(f"stage {self.stage.output!r} did not run in the forward of {self.backbone_name!r}")
        return AbnOutput(perception_logits, *found[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B,C,H,W]`` -> perception logits ``[B,K]``."""
        return self.forward_branches(x).perception_logits

    def explain(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B,C,H,W]`` -> attention maps ``[B,1,H,W]`` in ``[0,1]``: the attention map resized
        bilinearly to the input's resolution. Runs in eval mode (each submodule's flag restored after) and
        without gradients, so it changes neither BatchNorm statistics nor dropout state."""
        with torch.no_grad(), eval_mode(self):
            attention = self.forward_branches(images).attention_map
        if attention.shape[-2:] != images.shape[-2:]:
            attention = F.interpolate(attention, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return attention
