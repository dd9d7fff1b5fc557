"""The networks an export writes: plain ``nn.Module`` s that take normalised images ``[B,C,H,W]`` and give
probabilities ``[B,K]`` (and maps ``[B,1,H,W]``), with no impactx, Lightning or metric state inside.

- :class:`SelfExplainingExport` (IMPACTX, ABN): ``forward(images) -> (probabilities, maps)``; the map is a
  forward output, so torch.export, TorchScript and ONNX all carry it.
- :class:`ProbabilitiesExport` (plain classifiers, torch.export and ONNX): ``forward(images) -> probabilities``.
  A gradient map cannot be carried there (torch.export fails on ``autograd.grad``; the ONNX exporters reject it).
- :class:`GradientExplainerExport` (plain classifiers, TorchScript): ``forward(images) -> probabilities`` and
  a scripted ``explain(images, target=None) -> maps``, the path attribution of
  :func:`impactx.attribution.paths.path_attribution` with the paths saved in the artifact: IG from the
  blank image on Gauss-Legendre nodes, or EG over a fixed set of (reference, alpha) pairs shared by every
  image. impactx's own EG draws its pairs per image from a keyed generator, which TorchScript cannot
  reproduce; a fixed set keeps the artifact deterministic (the same image always gets the same map).
"""

# No `from __future__ import annotations`: TorchScript reads the annotations of the scripted class.
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from impactx.core import OUTPUTS

__all__ = ["GradientExplainerExport", "ProbabilitiesExport", "SelfExplainingExport"]


class SelfExplainingExport(nn.Module):
    """``images [B,C,H,W] -> (probabilities [B,K], maps [B,1,H,W])`` of IMPACTX or ABN.

    Args:
        kind: ``"decoder"`` (``network`` is an :class:`~impactx.models.impactx_net.ImpactxNet`: C's softmax and
            D(LEP(x))) or ``"attention"`` (an :class:`~impactx.models.abn.AttentionBranchNetwork`: the
            perception branch's softmax and the attention map, resized bilinearly to ``image_size`` as
            ``AttentionBranchNetwork.explain`` does).
        network: the trained network, in eval mode.
        image_size: the input side ``H = W``.
    """

    def __init__(self, kind: str, network: nn.Module, image_size: int) -> None:
        super().__init__()
        if kind not in ("decoder", "attention"):
            raise ValueError(f"kind must be 'decoder' or 'attention', got {kind!r}")
        self.kind = kind
        self.network = network
        self.image_size = int(image_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "decoder":
            out = self.network.forward_all(images)
            return out.logits.softmax(dim=1), out.maps
        out = self.network.forward_branches(images)
        maps = out.attention_map
        if maps.shape[-1] != self.image_size or maps.shape[-2] != self.image_size:
            maps = F.interpolate(maps, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return out.perception_logits.softmax(dim=1), maps


class ProbabilitiesExport(nn.Module):
    """``images [B,C,H,W] -> probabilities [B,K]``: the softmax of ``classifier``'s logits."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).softmax(dim=1)


class GradientExplainerExport(nn.Module):
    """A classifier with a TorchScript ``explain``: ``phi(x) = sum_s w_s (x - r_s) grad f(r_s + a_s (x - r_s))``,
    summed over channels, for the predicted class (or ``target``).

    Args:
        classifier: ``images [N,C,H,W] -> logits [N,K]``, traced or scripted (a ``torch.jit`` module).
        references: ``[R,C,H,W]`` reference images (IG: the one blank image).
        ref_index: ``[S]`` long, the reference of each path sample.
        alphas, weights: ``[S]`` position along the path and weight of each sample.
        output: explained score, ``"logit"`` | ``"prob"`` | ``"log_prob"``.
        max_points: at most this many path points per forward/backward (bounds the memory).
    """

    __constants__ = ["output", "max_points"]

    def __init__(self, classifier: nn.Module, references: torch.Tensor, ref_index: torch.Tensor,
                 alphas: torch.Tensor, weights: torch.Tensor, output: str = "logit", max_points: int = 512) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        samples = ref_index.shape[0]
        if alphas.shape != (samples,) or weights.shape != (samples,):
            raise ValueError(f"ref_index, alphas and weights need one value per sample ([{samples}]), got "
                             f"{list(alphas.shape)} and {list(weights.shape)}")
        self.classifier = classifier
        self.register_buffer("references", references.float().contiguous())
        self.register_buffer("ref_index", ref_index.long())
        self.register_buffer("alphas", alphas.float())
        self.register_buffer("weights", weights.float())
        self.output = output
        self.max_points = int(max_points)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images).softmax(dim=1)

    def _scores(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.output == "prob":
            logits = logits.softmax(dim=1)
        elif self.output == "log_prob":
            logits = logits.log_softmax(dim=1)
        return logits.gather(1, target.view(-1, 1)).squeeze(1)

    @torch.jit.export
    def explain(self, images: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045 (TorchScript)
        """``images [B,C,H,W]`` (and ``target [B]`` long; ``None``: the predicted class) -> maps ``[B,1,H,W]``.
        Takes gradients: not under ``torch.inference_mode``."""
        if target is None:
            with torch.no_grad():
                target = self.classifier(images).argmax(dim=1)
        samples = self.ref_index.shape[0]
        per_block = max(1, self.max_points // samples)
        references = self.references.index_select(0, self.ref_index).unsqueeze(0)  # [1,S,C,H,W]
        alphas = self.alphas.view(1, samples, 1, 1, 1)
        weights = self.weights.view(1, samples, 1, 1, 1)
        previous = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        blocks: list[torch.Tensor] = []
        for start in range(0, images.shape[0], per_block):
            x = images[start:start + per_block].detach().unsqueeze(1)  # [n,1,C,H,W]
            n = x.shape[0]
            delta = x - references
            points = (references + alphas * delta).reshape(n * samples, x.shape[2], x.shape[3], x.shape[4])
            points = points.detach().requires_grad_(True)
            labels = target[start:start + per_block].repeat_interleave(samples)
            score = self._scores(self.classifier(points), labels).sum()
            grads = torch.autograd.grad([score], [points])[0]
            assert grads is not None
            attributions = (weights * delta * grads.view(n, samples, x.shape[2], x.shape[3], x.shape[4])).sum(dim=1)
            blocks.append(attributions.sum(dim=1, keepdim=True).detach())
        torch.set_grad_enabled(previous)
        return torch.cat(blocks)
