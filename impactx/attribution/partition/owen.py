"""``partition``: shap's Partition (Owen value) explanation, computed batched on the inputs' device.

It reproduces ``shap.explainers.PartitionExplainer.owen`` with an ``Image("blur(kx,ky)")`` masker
(see :mod:`impactx.attribution.partition.shap_reference`, the reference it is tested against):

- the same hierarchy (:mod:`impactx.attribution.partition.tree`), the same blur
  (:mod:`impactx.attribution.partition.blur`), the same explained score, the same budget: two evaluations
  for the image and its blurred copy, then ``max_evals - 2`` for the expansions;
- the same spending order. shap keeps a priority queue of *entries* ``(node, coalition m00, f00, f11,
  weight)``; ``f00``/``f11`` are the scores with the node's features hidden/shown on top of ``m00`` and
  ``weight = 2**-depth``. Each round pops the ``ceil(batch_size / 2)`` entries of largest
  ``|f11 - f00| * weight``, evaluates ``m00 + left`` and ``m00 + right`` for each (2 evals) and pushes
  the four children entries ``(left, m00)``, ``(right, m00)``, ``(left, m00 + right)``,
  ``(right, m00 + left)`` with half the weight. When the budget is spent, every entry still queued leaves
  ``(f11 - f00) * weight`` on its node, which is spread evenly over the node's features. (Popped leaf
  entries take no evaluations and are never expanded, so they are simply never queued here: their
  mass is kept as it is.)

How it is batched: every image of the batch runs the same rounds in lockstep. The queue is a set of
``[B, Q]`` tensors (node, context bits, ``f00``, ``f11``, priority); a round is one ``topk`` over it,
a handful of gathers, one model call over all the round's masked images (chunked by
``internal_batch_size``) and one contiguous write of the new entries. A coalition ``m00`` is stored as
an int64 bit set over depths: bit ``d`` says whether the sibling of the node's depth-``d+1`` ancestor
is shown. A masked image is then ``torch.where(mask, x, blurred)`` with the mask read off the tree's
per-node divergence tables (rows x columns; channels only at one pixel), see
:func:`impactx.attribution.partition.masking.masked_images`.
Host-device syncs: none per round while the number of queued internal entries provably exceeds the
round's pops (a bound kept on the host and refreshed by an occasional ``min``); otherwise (tiny trees)
each round syncs once and evaluates only the entries that exist.

Where it can differ from shap: shap breaks exact priority ties with ``np.random.randn``; here ``topk``
decides. Ties only arise between entries whose scores are bit-identical (e.g. regions where blurring
changes nothing, whose entries carry zero mass either way), so the values agree up to float rounding of
the model's batched outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from impactx.attribution.base import Explainer
from impactx.attribution.partition.blur import box_blur, resolve_blur_kernel
from impactx.attribution.partition.masking import MaskedScorer
from impactx.attribution.partition.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_EVALS,
    OwenOptionsMixin,
    OwenResult,
    check_partition_options,
)
from impactx.attribution.partition.queue import OwenQueue, expand_entries, spread_to_features
from impactx.attribution.partition.tree import ImageTree, image_tree
from impactx.attribution.registry import register
from impactx.core import Output, check_internal_batch_size

# Masked images per model call when not given: small CPU batches stay in cache (LeNet-5 runs ~1.6x faster
# at 256 than at 2048 rows on a CPU core); accelerators want large ones.
CPU_INTERNAL_BATCH_SIZE = 256
DEVICE_INTERNAL_BATCH_SIZE = 8192


def default_internal_batch_size(device: torch.device) -> int:
    return CPU_INTERNAL_BATCH_SIZE if device.type == "cpu" else DEVICE_INTERNAL_BATCH_SIZE



def expansion_evals(max_evals: int) -> int:
    """Model evaluations per image that ``partition``/``shap`` spend with ``max_evals`` on a large image.

    ``2 + 2 * ceil((max_evals - 2) / 2)``: shap may overshoot an odd ``max_evals`` by one. (Tiny images
    whose whole tree is expanded early spend less; :attr:`OwenResult.evals` has the exact count.)
    """
    budget = max_evals - 2
    return 2 + 2 * max(0, math.ceil(budget / 2))


class _LockstepSchedule:
    """How many entries every image pops in the next round, kept on the host while it is the same for all.

    shap pops ``min(per_round, ceil(budget_left / 2), internal entries queued)`` per round. The first two
    are the same for every image; the third is known exactly while rounds only expand nodes above the
    shallowest leaf parent (each expansion then queues 4 internal entries for 1), and after that a lower
    bound is kept (an expansion can queue no internal entry); when the bound runs short it is refreshed
    from the device (one sync). Only if the images really differ does the caller switch to per-image
    bookkeeping (``next_pops`` returns ``None`` from then on).
    """

    def __init__(self, budget: int, per_round: int, tree: ImageTree) -> None:
        self.budget, self.per_round = budget, per_round
        self.leaf_parent_depth = tree.leaf_parent_depth
        root = tree.root
        self.live_bound = 2 * sum(
            int(not tree.is_leaf[child]) for child in (tree.left[root], tree.right[root])
        )
        self.exact, self.active = True, True
        self.spent, self.rounds = 2, 1  # after round 1, which expanded the root

    def next_pops(self, live: torch.Tensor) -> int | None:
        if not self.active:
            return None
        pops = min(self.per_round, math.ceil((self.budget - self.spent) / 2))
        if pops > self.live_bound and not self.exact:
            low, high = torch.stack((live.min(), live.max())).tolist()
            self.live_bound, self.exact = low, low == high
            if not self.exact and low < pops:
                self.active = False
                return None
        return max(0, min(pops, self.live_bound))

    def advance(self, pops: int) -> None:
        self.rounds += 1
        self.spent += 2 * pops
        # round r pops entries of depth <= r - 1
        if self.rounds - 1 < self.leaf_parent_depth and self.exact:
            self.live_bound += 3 * pops
        else:
            self.live_bound, self.exact = self.live_bound - pops, False


def _score_children(
    score: MaskedScorer, tree: ImageTree, node: torch.Tensor, ctx: torch.Tensor, valid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``f10, f01 [B, P, T]`` of ``m00 + left`` and ``m00 + right`` for the popped entries (only the
    ``valid`` ones are evaluated; the others get 0)."""
    child_nodes = torch.stack((tree.left[node], tree.right[node]), dim=2).flatten(1)
    child_words = (ctx | (1 << tree.inf_depth)).repeat_interleave(2, dim=1)
    if valid is None:
        f = score(child_nodes, child_words)
    else:
        pairs = valid.repeat_interleave(2, dim=1)
        where = pairs.nonzero()
        outputs = score.target.shape[1]
        f = torch.zeros((*child_nodes.shape, outputs), dtype=torch.float64, device=node.device)
        f[where[:, 0], where[:, 1]] = score(
            child_nodes[pairs].view(-1, 1), child_words[pairs].view(-1, 1), where[:, 0]
        ).view(-1, outputs)
    return f[:, 0::2], f[:, 1::2]


@torch.no_grad()
def partition_owen(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor,
    max_evals: int = DEFAULT_MAX_EVALS,
    blur_kernel: int | tuple[int, int] | None = None,
    output: Output = "prob",
    batch_size: int = DEFAULT_BATCH_SIZE,
    internal_batch_size: int | None = None,
) -> OwenResult:
    """Partition-SHAP Owen values of ``inputs [B, C, H, W]`` for classes ``target [B]`` (long), batched.

    ``target [B, T]`` explains ``T`` classes of each image together, as shap does for a model with several
    outputs: one queue per image whose priority is the largest change over the ``T`` outputs, every masked
    image evaluated once and read for all of them, the ``max_evals`` budget shared; ``attributions`` are then
    ``[B, T, C, H, W]`` and the values ``[B, T]``.

    Options as :class:`Partition`. The model is called as it is (put it in eval mode first). Returns an
    :class:`OwenResult` on the inputs' device; ``attributions`` in the inputs' dtype.
    """
    check_partition_options(max_evals, batch_size, output)
    check_internal_batch_size(internal_batch_size)
    batch, channels, height, width = inputs.shape
    device = inputs.device
    if internal_batch_size is None:
        internal_batch_size = default_internal_batch_size(device)
    tree = image_tree(height, width, channels, device)
    host_tree = image_tree(height, width, channels)
    x = inputs.detach().contiguous()
    blurred = box_blur(x, resolve_blur_kernel(blur_kernel, height, width)).contiguous()
    targets = target.view(batch, -1)  # [B, T]
    score = MaskedScorer(model, x, blurred, targets, tree, output, internal_batch_size)
    budget = max_evals - 2
    per_round = (batch_size + 1) // 2  # shap pops entries while it holds fewer than batch_size masks
    root, inf_bit = tree.root, 1 << tree.inf_depth

    # Round 1: the blurred image, the image, and (if the budget allows) the root's two children.
    expand_root = budget > 0
    first_nodes = [root, root] + (
        [int(host_tree.left[root]), int(host_tree.right[root])] if expand_root else []
    )
    first_words = [0, inf_bit] + ([inf_bit, inf_bit] if expand_root else [])
    f = score(
        torch.tensor(first_nodes, device=device).expand(batch, -1),
        torch.tensor(first_words, device=device).expand(batch, -1),
    )
    base_values, full_values = f[:, 0], f[:, 1]  # [B, T]
    evals = torch.full((batch,), len(first_nodes), dtype=torch.long, device=device)
    queue = OwenQueue(batch, 1 + 4 * max(0, math.ceil(budget / 2)), device, outputs=targets.shape[1])
    root_col = torch.full((batch, 1), root, dtype=torch.long, device=device)
    queue.push(
        root_col,
        torch.zeros_like(root_col),
        base_values[:, None],
        full_values[:, None],
        torch.zeros((batch, 1), dtype=torch.float64, device=device),
    )
    if not expand_root:
        attributions = spread_to_features(tree, queue)
        return _result(attributions, inputs, target, base_values, full_values, evals)

    node, ctx, f00, f11 = queue.take(torch.zeros((batch, 1), dtype=torch.long, device=device), None)
    queue.push(*expand_entries(tree, node, ctx, f00, f11, f[:, 2:3], f[:, 3:4], None))
    live = (~tree.is_leaf[queue.node[:, 1:5]]).sum(1)  # queued internal entries per image
    schedule = _LockstepSchedule(budget, per_round, host_tree)

    while True:
        pops = schedule.next_pops(live)
        if pops == 0:
            break
        if pops is not None:  # every image pops the same number of entries: dense, no sync
            slots, _ = queue.pop(pops)
            valid = None
        else:  # images differ (tiny trees running dry): per-image counts, one sync per round
            wanted = ((budget - (evals - 2) + 1) // 2).clamp(0, per_round)
            slots, priority = queue.pop(per_round, ordered=True)
            valid = (torch.arange(slots.shape[1], device=device) < wanted.unsqueeze(1)) & priority.isfinite()
            if not bool(valid.any()):
                break
        node, ctx, f00, f11 = queue.take(slots, valid)
        f10, f01 = _score_children(score, tree, node, ctx, valid)
        entries = expand_entries(tree, node, ctx, f00, f11, f10, f01, valid)
        queue.push(*entries)
        popped = slots.shape[1] if valid is None else valid.sum(1)
        live = live - popped + (~tree.is_leaf[entries[0]] & entries[4].isfinite()).sum(1)
        evals += 2 * popped
        if pops is not None:
            schedule.advance(pops)

    return _result(spread_to_features(tree, queue), inputs, target, base_values, full_values, evals)


def _result(
    features: torch.Tensor,
    inputs: torch.Tensor,
    target: torch.Tensor,
    base_values: torch.Tensor,
    full_values: torch.Tensor,
    evals: torch.Tensor,
) -> OwenResult:
    """``features [B, M, T]`` (HWC-flat) as ``[B, T, C, H, W]`` attributions, or ``[B, C, H, W]`` with the
    values ``[B]`` for a ``[B]`` target."""
    batch, channels, height, width = inputs.shape
    attributions = features.view(batch, height, width, channels, -1).permute(0, 4, 3, 1, 2)
    if target.dim() == 1:
        attributions, base_values, full_values = attributions[:, 0], base_values[:, 0], full_values[:, 0]
    return OwenResult(
        attributions=attributions.to(inputs.dtype).contiguous(),
        base_values=base_values,
        full_values=full_values,
        evals=evals,
    )


@register("partition")
class Partition(OwenOptionsMixin, Explainer):
    """Partition SHAP (Owen values over shap's image hierarchy, blur masking), batched on the device.

    Gives the values of ``shap_partition`` with the same options, every image of the batch and all
    masked variants of a round evaluated together.

    Args:
        max_evals: model evaluations per image (default 2000, as IMPACTX); see :func:`expansion_evals`.
        blur_kernel: ``(kh, kw)`` box of the blur masker, or an int; ``None``: ``round(8*H/32)``, ``round(8*W/32)``.
        output: ``"prob"`` (default, as IMPACTX), ``"logit"`` or ``"log_prob"`` score of the target class.
        batch_size: masks per expansion round, shap's ``batch_size`` (default 10); it sets the expansion
            order (``ceil(batch_size / 2)`` nodes per round) and so the values, not only the speed.
        internal_batch_size: most masked images per model call; ``None``: 256 on CPU, 8192 on an accelerator.
        joint_targets: how a several-target call (``target [B,T]``) is explained. ``False`` (default): each
            (image, target) pair on its own, row ``t`` equal to the call with ``target[:, t]``. ``True``: shap's
            multi-output Partition, one queue per image ordered by the largest change over the ``T`` outputs,
            each masked image evaluated once for all of them and ``max_evals`` shared, so about ``T`` times
            fewer model calls; a class's map then depends on which other classes are asked for.
        reduce_channels: return ``[B, 1, H, W]`` (sum over channels).
    """

    needs_gradients = False

    def __init__(
        self,
        max_evals: int = DEFAULT_MAX_EVALS,
        blur_kernel: int | tuple[int, int] | None = None,
        output: Output = "prob",
        batch_size: int = DEFAULT_BATCH_SIZE,
        internal_batch_size: int | None = None,
        joint_targets: bool = False,
        reduce_channels: bool = False,
    ) -> None:
        super().__init__(reduce_channels=reduce_channels)
        self._init_owen_options(max_evals, blur_kernel, output, batch_size, joint_targets)
        check_internal_batch_size(internal_batch_size)
        self.internal_batch_size = internal_batch_size

    def evals_per_image(self) -> int:
        """Model evaluations each image costs (exact for images whose tree outlasts the budget)."""
        return expansion_evals(self.max_evals)

    def _attribute(
        self, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, background: torch.Tensor | None
    ) -> torch.Tensor:
        return partition_owen(
            model, inputs, target, internal_batch_size=self.internal_batch_size, **self._owen_options()
        ).attributions
