"""shap's Partition priority queue for a batch of images, held as ``[B, Q]`` tensors.

An *entry* is ``(node, ctx, f00, f11)`` with priority ``-max_t |f11 - f00| * 2**-depth(node)`` (shap's
``-np.max(np.abs(f11 - f00)) * weight``; ``f00, f11`` hold the ``T`` explained outputs, the max is over them); ``ctx`` is the coalition ``m00`` as an int64 bit set over depths
(bit ``d``: the sibling of the node's depth-``d+1`` ancestor is shown). Expanded entries keep their slot
with priority ``inf`` and zero mass (``f11 = f00``); leaf entries are stored with priority ``inf`` (shap
pops them without evaluating anything, which changes nothing). At the end every slot's mass
``(f11 - f00) * 2**-depth`` is spread over its node's features (shap's ``lower_credit``).
"""

from __future__ import annotations

import math

import torch

from impactx.attribution.partition.tree import ImageTree


class OwenQueue:
    """shap's priority queue for ``B`` images at once, as ``[B, Q]`` tensors (``Q`` fixed by the budget);
    the scores ``f00, f11`` are ``[B, Q, T]`` for ``T`` outputs explained together."""

    def __init__(self, batch: int, capacity: int, device: torch.device, outputs: int = 1) -> None:
        self.node = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.ctx = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.f00 = torch.zeros(batch, capacity, outputs, dtype=torch.float64, device=device)
        self.f11 = torch.zeros(batch, capacity, outputs, dtype=torch.float64, device=device)
        self.priority = torch.full((batch, capacity), math.inf, dtype=torch.float64, device=device)
        self.filled = 0

    def pop(self, count: int, ordered: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``count`` queued entries of highest priority: ``(slots [B, count], their priorities)``,
        best first if ``ordered``."""
        count = min(count, self.filled)
        priority, slots = self.priority[:, : self.filled].topk(count, dim=1, largest=False, sorted=ordered)
        return slots, priority

    def take(self, slots: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Read entries at ``slots`` and mark the ``valid`` ones expanded (dequeued, their mass handed
        to their children)."""
        node, ctx = self.node.gather(1, slots), self.ctx.gather(1, slots)
        score_slots = slots.unsqueeze(2).expand(-1, -1, self.f00.shape[2])
        f00, f11 = self.f00.gather(1, score_slots), self.f11.gather(1, score_slots)
        if valid is None:
            self.priority.scatter_(1, slots, math.inf)
            self.f11.scatter_(1, score_slots, f00)
        else:
            self.priority.scatter_(1, slots, torch.where(valid, math.inf, self.priority.gather(1, slots)))
            self.f11.scatter_(1, score_slots, torch.where(valid.unsqueeze(2), f00, f11))
        return node, ctx, f00, f11

    def _grow(self, needed: int) -> None:
        extra = max(needed, 2 * self.node.shape[1]) - self.node.shape[1]
        for name in ("node", "ctx", "f00", "f11", "priority"):
            old = getattr(self, name)
            fill = math.inf if name == "priority" else 0
            setattr(self, name, torch.cat((old, old.new_full((old.shape[0], extra, *old.shape[2:]), fill)), dim=1))

    def push(
        self,
        node: torch.Tensor,
        ctx: torch.Tensor,
        f00: torch.Tensor,
        f11: torch.Tensor,
        priority: torch.Tensor,
    ) -> None:
        """Append ``[B, n]`` entries (the same number for every image; ``f00, f11 [B, n, T]``)."""
        n = node.shape[1]
        end = self.filled + n
        if end > self.node.shape[1]:
            self._grow(end)
        self.node[:, self.filled : end] = node
        self.ctx[:, self.filled : end] = ctx
        self.f00[:, self.filled : end] = f00
        self.f11[:, self.filled : end] = f11
        self.priority[:, self.filled : end] = priority
        self.filled = end


def expand_entries(
    tree: ImageTree,
    node: torch.Tensor,
    ctx: torch.Tensor,
    f00: torch.Tensor,
    f11: torch.Tensor,
    f10: torch.Tensor,
    f01: torch.Tensor,
    valid: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """The four entries shap pushes for each expanded entry ``[B, P]`` (scores ``[B, P, T]``), as ``[B, 4P]``
    tensors (scores ``[B, 4P, T]``).

    Leaf children get priority ``inf`` (never expanded; their mass stays). Invalid slots push nothing
    (zero mass, priority ``inf``).
    """
    left, right = tree.left[node], tree.right[node]
    if valid is not None:  # an invalid slot may hold a leaf (no children): point it at node 0, with zero mass
        left, right = left.clamp_min(0), right.clamp_min(0)
    depth = tree.depth[node]
    side = ctx | (1 << depth)  # the sibling (at depth + 1) is shown
    child = torch.stack((left, right, left, right), dim=2)
    child_ctx = torch.stack((ctx, ctx, side, side), dim=2)
    lo = torch.stack((f00, f00, f01, f10), dim=2)  # [B, P, 4, T]
    hi = torch.stack((f10, f01, f11, f11), dim=2)
    weight = torch.ldexp(torch.ones_like(depth, dtype=torch.float64), -(depth + 1)).unsqueeze(2)
    priority = -(hi - lo).abs().amax(dim=3) * weight  # shap: -np.max(np.abs(f_hi - f_lo)) * new_weight
    priority = priority.masked_fill(tree.is_leaf[child], math.inf)
    if valid is not None:
        priority = priority.masked_fill(~valid.unsqueeze(2), math.inf)
        hi = torch.where(valid.view(*valid.shape, 1, 1), hi, lo)
    batch, outputs = node.shape[0], f00.shape[2]
    lo, hi = lo.reshape(batch, -1, outputs), hi.reshape(batch, -1, outputs)
    return child.reshape(batch, -1), child_ctx.reshape(batch, -1), lo, hi, priority.reshape(batch, -1)


def spread_to_features(tree: ImageTree, queue: OwenQueue, max_elements: int = 1 << 25) -> torch.Tensor:
    """shap's ``lower_credit``: each queued entry's ``(f11 - f00) * weight`` spread evenly over its
    node's features. Returns ``[B, M, T]`` float64 over shap's feature ids (HWC-flat positions).

    Works on ``max_elements // (num_nodes * T)`` images at a time (a ``[b, num_nodes, T]`` accumulator each).
    """
    batch = queue.node.shape[0]
    step = max(1, max_elements // (tree.num_nodes * queue.f00.shape[2]))
    sizes = tree.size.to(torch.float64)
    out = []
    for start in range(0, batch, step):
        node = queue.node[start : start + step, : queue.filled]
        weight = torch.ldexp(
            torch.ones(node.shape, dtype=torch.float64, device=node.device), -tree.depth[node]
        )
        f00, f11 = (
            queue.f00[start : start + step, : queue.filled],
            queue.f11[start : start + step, : queue.filled],
        )
        outputs = f00.shape[2]
        per_node = torch.zeros(node.shape[0], tree.num_nodes, outputs, dtype=torch.float64, device=node.device)
        per_node.scatter_add_(1, node.unsqueeze(2).expand(-1, -1, outputs), (f11 - f00) * weight.unsqueeze(2))
        density = per_node / sizes.unsqueeze(1)
        for level in tree.levels[1:]:
            density[:, level] += density[:, tree.parent[level]]
        out.append(density[:, : tree.num_features])
    return torch.cat(out)
