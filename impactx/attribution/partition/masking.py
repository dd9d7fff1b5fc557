"""Masked copies of images for coalitions of shap's image hierarchy, and the model's scores on them."""

from __future__ import annotations

import math

import torch
from torch import nn

from impactx.attribution.partition.tree import ImageTree
from impactx.core import Output, target_scores


def masked_images(
    tree: ImageTree, x: torch.Tensor, blurred: torch.Tensor, nodes: torch.Tensor, words: torch.Tensor
) -> torch.Tensor:
    """``[G, E, C, H, W]``: for image ``g`` and coalition ``(nodes[g, e], words[g, e])``, ``x[g]`` where the
    coalition is on and ``blurred[g]`` elsewhere.

    ``x, blurred [G, C, H, W]`` (contiguous); ``nodes, words [G, E]`` int64. The feature ``(c, h, w)`` is
    on iff bit ``min(div_c, div_h, div_w)`` of the word is set (see :func:`partition_tree.coalition_masks`).
    Rows and columns give a ``[G, E, H, W]`` mask; channel splits exist only inside single pixels, so
    the channel term matters at the node's anchor pixel alone, which is patched afterwards.
    """
    g, e = nodes.shape
    c, h, w = x.shape[1:]
    word = words.unsqueeze(-1)
    dh = tree.div_h[nodes]  # [G, E, H] uint8
    dw = tree.div_w[nodes]  # [G, E, W]
    on_h = ((word >> dh.long()) & 1).bool()
    on_w = ((word >> dw.long()) & 1).bool()
    mask = torch.where(dw.unsqueeze(-2) < dh.unsqueeze(-1), on_w.unsqueeze(-2), on_h.unsqueeze(-1))
    out = torch.where(mask.unsqueeze(2), x.unsqueeze(1), blurred.unsqueeze(1))  # [G, E, C, H, W]
    if c > 1:
        on_c = ((word >> tree.div_c[nodes].long()) & 1).bool()  # [G, E, C]
        anchor = tree.anchor[nodes]  # [G, E]
        index = anchor.unsqueeze(1).expand(g, c, e)
        at_x = x.reshape(g, c, h * w).gather(2, index).transpose(1, 2)
        at_blur = blurred.reshape(g, c, h * w).gather(2, index).transpose(1, 2)
        out.view(g, e, c, h * w).scatter_(
            3, anchor.view(g, e, 1, 1).expand(g, e, c, 1), torch.where(on_c, at_x, at_blur).unsqueeze(-1)
        )
    return out


class MaskedScorer:
    """Evaluates the explained scores on masked copies of the batch, ``internal_batch_size`` rows per call.

    ``target [B, T]``: the ``T`` classes explained for each image, all read from the same forward.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        blurred: torch.Tensor,
        target: torch.Tensor,
        tree: ImageTree,
        output: Output,
        internal_batch_size: int,
    ) -> None:
        self.model, self.x, self.blurred, self.target = model, x, blurred, target
        self.tree, self.output, self.rows = tree, output, internal_batch_size

    def __call__(
        self, nodes: torch.Tensor, words: torch.Tensor, images: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``[G, E, T]`` (float64) of coalitions ``nodes, words [G, E]`` of images ``images [G]``
        (``None``: all ``B`` images of the batch, ``G = B``)."""
        g, e = nodes.shape
        count = self.target.shape[1]
        chunks = max(1, math.ceil(g * e / self.rows))
        per_chunk = math.ceil(g / chunks)
        scores = []
        for start in range(0, g, per_chunk):
            stop = min(start + per_chunk, g)
            if images is None:
                x, blurred, target = self.x[start:stop], self.blurred[start:stop], self.target[start:stop]
            else:
                rows = images[start:stop]
                x, blurred, target = self.x[rows], self.blurred[rows], self.target[rows]
            batch = masked_images(self.tree, x, blurred, nodes[start:stop], words[start:stop])
            logits = self.model(batch.view(-1, *batch.shape[2:]))
            classes = target.repeat_interleave(e, dim=0).reshape(-1)  # row (image, coalition, t)
            scores.append(target_scores(logits.repeat_interleave(count, dim=0), classes, self.output))
        return torch.cat(scores).view(g, e, count).to(torch.float64)
