"""The hierarchy of image features that shap's ``Image`` masker builds, held as tensors.

shap's ``maskers.Image`` partitions an ``H x W x C`` image (features = the ``M = H*W*C`` entries of the
HWC-flattened image) by recursive axis-aligned halving: a box is split along rows while it is at
least as tall as wide, else along columns, and along channels only once it is a single pixel; the
left part gets ``width // 2``. Boxes are numbered in the order of a heap keyed by
``(-size, xmin, xmax, ymin, ymax, zmin, zmax, parent, is_left)``: internal nodes get ids
``2M-2`` (the root) down to ``M``, leaves ids ``M-1`` down to ``0``. Because shap assigns leaf id
``M-1-f`` to the box at HWC-flat position ``f`` while its masker reads a leaf id as a flat position,
the hierarchy the masker actually applies is the point reflection of the boxes (row ``h`` ->
``H-1-h`` etc.). :func:`image_tree` reproduces all of this exactly (``ImageTree.clustering()`` equals
``shap.maskers.Image(...).clustering``) and stores what the lockstep Owen algorithm needs:

- ``left, right, parent, depth, size`` per node, ``levels`` (node ids by depth);
- the *divergence tables* ``div_h [N, H]``, ``div_w [N, W]``, ``div_c [N, C]``: for node ``v`` and
  image row ``h``, the depth of the ancestor of ``v`` whose split puts row ``h`` on the other side
  from ``v`` (``inf_depth`` when row ``h`` lies in ``v``'s row range). For a feature ``(c, h, w)``
  the depth of its lowest common ancestor with ``v`` is ``min(div_c[v,c], div_h[v,h], div_w[v,w])``
  (``inf_depth``: the feature lies in ``v``). A coalition "the features of ``v`` plus the siblings
  of ``v``'s ancestors picked by the bits of ``ctx``" is then a per-feature bit lookup.
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass, fields

import numpy as np
import torch


@dataclass(frozen=True)
class ImageTree:
    """shap's image partition tree for ``[C, H, W]`` images, as tensors on one device.

    Node ids follow shap: leaves ``0..M-1`` (leaf ``f`` is the HWC-flat feature ``f``), internal
    nodes ``M..2M-2``, root ``2M-2``. All per-node tensors have length ``num_nodes = 2M-1``.
    """

    height: int
    width: int
    channels: int
    left: torch.Tensor  # [N] int64, -1 for leaves
    right: torch.Tensor  # [N] int64, -1 for leaves
    parent: torch.Tensor  # [N] int64, -1 for the root
    depth: torch.Tensor  # [N] int64, root 0
    size: torch.Tensor  # [N] int64, number of features under the node
    is_leaf: torch.Tensor  # [N] bool
    anchor: torch.Tensor  # [N] int64, flat h*W+w of the node's first pixel in image coordinates
    div_h: torch.Tensor  # [N, H] uint8
    div_w: torch.Tensor  # [N, W] uint8
    div_c: torch.Tensor  # [N, C] uint8
    levels: tuple[torch.Tensor, ...]  # node ids at depth 0, 1, ..., max_depth
    max_depth: int
    leaf_parent_depth: int  # smallest depth of an internal node that has a leaf child

    @property
    def num_features(self) -> int:
        return self.height * self.width * self.channels

    @property
    def num_nodes(self) -> int:
        return 2 * self.num_features - 1

    @property
    def root(self) -> int:
        return 2 * self.num_features - 2

    @property
    def inf_depth(self) -> int:
        """The divergence-table value meaning "inside the node" (one more than any real depth)."""
        return self.max_depth + 1

    @property
    def device(self) -> torch.device:
        return self.left.device

    def to(self, device: torch.device | str) -> ImageTree:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif isinstance(value, tuple):
                value = tuple(v.to(device) for v in value)
            moved[f.name] = value
        return ImageTree(**moved)

    def clustering(self) -> np.ndarray:
        """The tree in shap's ``masker.clustering`` format ``[M-1, 4]``: left, right, 0, size."""
        m = self.num_features
        out = np.zeros((m - 1, 4))
        out[:, 0] = self.left[m:].cpu().numpy()
        out[:, 1] = self.right[m:].cpu().numpy()
        out[:, 3] = self.size[m:].cpu().numpy()
        return out


def _build(height: int, width: int, channels: int) -> ImageTree:
    """Replay shap's ``_jit_build_partition_tree`` heap order (same tuples, same tie-breaks)."""
    m = height * width * channels
    n = 2 * m - 1
    left = [-1] * n
    right = [-1] * n
    parent = [-1] * n
    boxes = [(0, 0, 0, 0, 0, 0)] * n  # xmin, xmax, ymin, ymax, zmin, zmax in shap's (reflected) coords
    heap = [(0, 0, height, 0, width, 0, channels, -1, False)]
    ind = m - 2
    while heap:
        _, x0, x1, y0, y1, z0, z1, parent_ind, is_left = heapq.heappop(heap)
        node = ind + m
        if parent_ind >= 0:
            (left if is_left else right)[parent_ind + m] = node
            parent[node] = parent_ind + m
        boxes[node] = (x0, x1, y0, y1, z0, z1)
        xw, yw, zw = x1 - x0, y1 - y0, z1 - z0
        if not (xw == 1 and yw == 1 and zw == 1):
            lx0, lx1, ly0, ly1, lz0, lz1 = x0, x1, y0, y1, z0, z1
            rx0, rx1, ry0, ry1, rz0, rz1 = x0, x1, y0, y1, z0, z1
            if xw >= yw and xw > 1:
                lx1 = rx0 = x0 + xw // 2
            elif yw > 1:
                ly1 = ry0 = y0 + yw // 2
            else:
                lz1 = rz0 = z0 + zw // 2
            lsize = (lx1 - lx0) * (ly1 - ly0) * (lz1 - lz0)
            rsize = (rx1 - rx0) * (ry1 - ry0) * (rz1 - rz0)
            heapq.heappush(heap, (-lsize, lx0, lx1, ly0, ly1, lz0, lz1, ind, True))
            heapq.heappush(heap, (-rsize, rx0, rx1, ry0, ry1, rz0, rz1, ind, False))
        ind -= 1

    depth_list = [0] * n
    # parents have larger ids than their children (they are popped earlier), so one descending pass works
    for node in range(n - 2, -1, -1):
        depth_list[node] = depth_list[parent[node]] + 1
    left, right, parent = np.array(left), np.array(right), np.array(parent)
    boxes = np.array(boxes, dtype=np.int64)
    depth = np.array(depth_list, dtype=np.int64)
    sizes = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2]) * (boxes[:, 5] - boxes[:, 4])
    max_depth = int(depth.max())
    is_leaf = left < 0
    internal = ~is_leaf
    has_leaf_child = internal & (is_leaf[np.maximum(left, 0)] | is_leaf[np.maximum(right, 0)])
    leaf_parent_depth = int(depth[has_leaf_child].min()) if has_leaf_child.any() else max_depth

    # image-coordinate ranges of each node: the point reflection of shap's boxes (see module docstring)
    h0, h1 = height - boxes[:, 1], height - boxes[:, 0]
    w0, w1 = width - boxes[:, 3], width - boxes[:, 2]
    c0, c1 = channels - boxes[:, 5], channels - boxes[:, 4]
    anchor = h0 * width + w0

    inf = max_depth + 1
    if inf > 62:  # contexts are int64 bit sets indexed by depth
        raise ValueError(
            f"image {height}x{width}x{channels} gives a partition tree of depth {max_depth} > 61"
        )
    t = torch.from_numpy
    levels = [np.flatnonzero(depth == d) for d in range(max_depth + 1)]
    div = {}
    for name, lo, hi, extent in (("h", h0, h1, height), ("w", w0, w1, width), ("c", c0, c1, channels)):
        table = torch.full((n, extent), inf, dtype=torch.uint8)
        coord = torch.arange(extent)
        lo_t, hi_t, depth_t = t(lo), t(hi), t(depth)
        for nodes_np in levels[1:]:
            nodes = t(nodes_np)
            par = t(parent[nodes_np])
            inside_parent = (coord >= lo_t[par, None]) & (coord < hi_t[par, None])
            inside_node = (coord >= lo_t[nodes, None]) & (coord < hi_t[nodes, None])
            split_here = inside_parent & ~inside_node
            table[nodes] = torch.where(split_here, depth_t[par, None].to(torch.uint8), table[par])
        div[name] = table

    return ImageTree(
        height=height,
        width=width,
        channels=channels,
        left=t(left),
        right=t(right),
        parent=t(parent),
        depth=t(depth),
        size=t(sizes),
        is_leaf=t(is_leaf),
        anchor=t(anchor),
        div_h=div["h"],
        div_w=div["w"],
        div_c=div["c"],
        levels=tuple(t(lv) for lv in levels),
        max_depth=max_depth,
        leaf_parent_depth=leaf_parent_depth,
    )


@functools.lru_cache(maxsize=8)
def _cpu_tree(height: int, width: int, channels: int) -> ImageTree:
    return _build(height, width, channels)


@functools.lru_cache(maxsize=8)
def _device_tree(height: int, width: int, channels: int, device: str) -> ImageTree:
    return _cpu_tree(height, width, channels).to(device)


def image_tree(height: int, width: int, channels: int, device: torch.device | str = "cpu") -> ImageTree:
    """shap's partition tree for ``[channels, height, width]`` images, on ``device`` (cached)."""
    for name, value in (("height", height), ("width", width), ("channels", channels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if height * width * channels < 2:
        raise ValueError(
            f"an image needs at least 2 features to be partitioned, got {channels}x{height}x{width}"
        )
    device = torch.device(device)
    if device.type == "cpu":
        return _cpu_tree(height, width, channels)
    return _device_tree(height, width, channels, str(device))


def coalition_masks(tree: ImageTree, nodes: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Boolean feature masks ``[N, C, H, W]`` of coalitions given as ``(node, word)`` pairs.

    Feature ``(c, h, w)`` is on iff bit ``d`` of ``words[i]`` is set, where ``d`` is the depth of its
    lowest common ancestor with ``nodes[i]`` (``tree.inf_depth`` for the node's own features). Used by
    tests and as the readable reference of the fast mask path in :mod:`impactx.attribution.partition.owen`.
    """
    d = torch.minimum(
        torch.minimum(tree.div_c[nodes][:, :, None, None], tree.div_h[nodes][:, None, :, None]),
        tree.div_w[nodes][:, None, None, :],
    ).long()
    return ((words.view(-1, 1, 1, 1) >> d) & 1).bool()
