"""shap's Partition priority queue for a batch of images, held as ``[B, Q]`` tensors.

An *entry* is ``(node, ctx, f00, f11)`` with priority ``-|f11 - f00| * 2**-depth(node)`` (shap's
``-np.max(np.abs(f11 - f00)) * weight``); ``ctx`` is the coalition ``m00`` as an int64 bit set over depths
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
    """shap's priority queue for ``B`` images at once, as ``[B, Q]`` tensors (``Q`` fixed by the budget)."""

    def __init__(self, batch: int, capacity: int, device: torch.device) -> None:
        self.node = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.ctx = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.f00 = torch.zeros(batch, capacity, dtype=torch.float64, device=device)
        self.f11 = torch.zeros(batch, capacity, dtype=torch.float64, device=device)
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
        f00, f11 = self.f00.gather(1, slots), self.f11.gather(1, slots)
        if valid is None:
            self.priority.scatter_(1, slots, math.inf)
            self.f11.scatter_(1, slots, f00)
        else:
            self.priority.scatter_(1, slots, torch.where(valid, math.inf, self.priority.gather(1, slots)))
            self.f11.scatter_(1, slots, torch.where(valid, f00, f11))
        return node, ctx, f00, f11

    def _grow(self, needed: int) -> None:
        extra = max(needed, 2 * self.node.shape[1]) - self.node.shape[1]
        for name in ("node", "ctx", "f00", "f11", "priority"):
            old = getattr(self, name)
            fill = math.inf if name == "priority" else 0
            setattr(self, name, torch.cat((old, old.new_full((old.shape[0], extra), fill)), dim=1))

    def push(
        self,
        node: torch.Tensor,
        ctx: torch.Tensor,
        f00: torch.Tensor,
        f11: torch.Tensor,
        priority: torch.Tensor,
    ) -> None:
        """Append ``[B, n]`` entries (the same number for every image)."""
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
    """The four entries shap pushes for each expanded entry ``[B, P]``, as ``[B, 4P]`` tensors.

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
    lo = torch.stack((f00, f00, f01, f10), dim=2)
    hi = torch.stack((f10, f01, f11, f11), dim=2)
    weight = torch.ldexp(torch.ones_like(f00), -(depth + 1)).unsqueeze(2)
    priority = -(hi - lo).abs() * weight  # shap: -np.max(np.abs(f_hi - f_lo)) * new_weight
    priority = priority.masked_fill(tree.is_leaf[child], math.inf)
    if valid is not None:
        priority = priority.masked_fill(~valid.unsqueeze(2), math.inf)
        hi = torch.where(valid.unsqueeze(2), hi, lo)
    batch = node.shape[0]
    return tuple(t.reshape(batch, -1) for t in (child, child_ctx, lo, hi, priority))


def spread_to_features(tree: ImageTree, queue: OwenQueue, max_elements: int = 1 << 25) -> torch.Tensor:
    """shap's ``lower_credit``: each queued entry's ``(f11 - f00) * weight`` spread evenly over its
    node's features. Returns ``[B, M]`` float64 over shap's feature ids (HWC-flat positions).

    Works on ``max_elements // num_nodes`` images at a time (a ``[b, num_nodes]`` accumulator each).
    """
    batch = queue.node.shape[0]
    step = max(1, max_elements // tree.num_nodes)
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
        per_node = torch.zeros(node.shape[0], tree.num_nodes, dtype=torch.float64, device=node.device)
        per_node.scatter_add_(1, node, (f11 - f00) * weight)
        density = per_node / sizes
        for level in tree.levels[1:]:
            density[:, level] += density[:, tree.parent[level]]
        out.append(density[:, : tree.num_features])
    return torch.cat(out)
