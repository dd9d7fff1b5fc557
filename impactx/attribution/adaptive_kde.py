"""Locally adaptive Gaussian kernel density estimation (Shimazaki & Shinomoto, 2010), batched over samples sets,
as ADVISE's ``ADVISEkernel.m`` computes it (dehshibi/ADVISE; itself Shimazaki's ``ssvkernel``).

For each set ``x`` (one row of ``samples [K,N]``), on the grid ``tin`` (``L0`` points):

1. ``t = tin``, or a coarser grid ``linspace(min, max, ceil(T / dt_samp))`` when the smallest positive gap
   between the sorted samples (inside ``[min tin, max tin]``) exceeds the grid step; ``dt`` its step.
2. The finest histogram ``y_hist = histc(x, t - dt/2) / dt`` (MATLAB's ``histc``: bin ``k`` holds
   ``e_k <= x < e_{k+1}``, the last bin only ``x == e_L``), ``N`` the samples counted.
3. ``M`` bandwidths ``W = logexp(linspace(ilogexp(5 dt), ilogexp(T), M))``; for each, the local cost
   ``c_j = yh^2 - 2 yh y_hist + 2 / sqrt(2 pi) / w_j * y_hist`` with ``yh`` the histogram smoothed by ``w_j``
   (FFT convolution, zero padding to a power of two beyond ``L + 3w``).
4. For each window ``WIN_i``, the locally optimal bandwidth ``optws[i, l] = W[argmin_j (c_j smoothed by WIN_i)]``.
5. A golden-section search (at most 29 steps, tolerance 1e-5) of the stiffness ``g`` in ``(1e-12, 1)``
   minimising the cost of the variable-bandwidth (balloon) estimate; the estimate of the last evaluated ``g``,
   normalised to unit area, interpolated linearly back to ``tin``.

A set the MATLAB code would fail on (its ``try`` returns nothing: the search never ran) gets ``ok = False``.
Everything is tensor code over all sets at once; sets are grouped by their grid length ``L`` (most share
``tin``). Computed in float64.
"""

from __future__ import annotations

import math

import torch

__all__ = ["adaptive_kde", "count_peaks"]

_SQRT_2PI = math.sqrt(2 * math.pi)
_PHI = (math.sqrt(5) + 1) / 2


def _logexp(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 1e2, torch.log1p(torch.exp(torch.clamp(x, max=1e2))), x)


def _ilogexp(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 1e2, torch.log(torch.expm1(torch.clamp(x, max=1e2))), x)


def _fft_smooth(x: torch.Tensor, w: float, spectra: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """``x [..., L]`` convolved with a Gaussian of ``w`` samples (``fftkernel`` of the MATLAB code). ``spectra``
    keeps ``x``'s FFT per padded length, for several widths smoothing the same ``x``."""
    length = x.shape[-1]
    n = 2 ** math.ceil(math.log2(length + 3 * w))
    f = torch.cat([-torch.arange(0, n // 2 + 1, dtype=x.dtype), torch.arange(n // 2 - 1, 0, -1, dtype=x.dtype)]) / n
    kernel = torch.exp(-0.5 * (w * 2 * math.pi * f) ** 2).to(x.device)
    spectrum = spectra.get(n) if spectra is not None else None
    if spectrum is None:
        spectrum = torch.fft.fft(x, n=n)
        if spectra is not None:
            spectra[n] = spectrum
    return torch.fft.ifft(spectrum * kernel, n=n).real[..., :length]


def _cost(y_hist: torch.Tensor, n: torch.Tensor, sq_diff: torch.Tensor, dt: float, optws: torch.Tensor,
          win: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MATLAB ``CostFunction`` for stiffness ``g [K]``: ``(cost [K], estimate yv [K,L])``; ``sq_diff [L,L]``
    holds ``(t_k - t_l)^2``."""
    gs = optws / win.view(1, -1, 1)  # [K, M, L]
    g3 = g.view(-1, 1, 1)
    m = gs.shape[1]
    positions = torch.arange(m, device=gs.device).view(1, -1, 1)
    last = torch.where(gs >= g3, positions, -1).amax(dim=1).clamp(min=0)  # the last index with gs >= g
    inner = g.view(-1, 1) * win[last]
    optwv = torch.where(g.view(-1, 1) > gs.amax(dim=1), win.min(),
                        torch.where(g.view(-1, 1) < gs.amin(dim=1), win.max(), inner))  # [K, L]
    # The [K, L, L] Gaussians are the cost: each is built in one pass (exp in place) and reduced by a batched
    # matrix product, with the per-column or per-row normalisation 1 / (sqrt(2 pi) w) taken outside.
    width = optwv / g.view(-1, 1)  # Nadaraya-Watson bandwidth of column l
    z = _gaussian_exponent(sq_diff, width.unsqueeze(1))  # [K, L(k), L(l)], unnormalised
    norm = 1 / (_SQRT_2PI * width)
    sums = _row_sums(z, torch.stack([optwv * norm, norm], dim=2))  # [K, L, 2]
    optwp = sums[..., 0] / sums[..., 1]  # [K, L]
    z = _gaussian_exponent(sq_diff, optwp.unsqueeze(2))
    weighted = (y_hist * dt).unsqueeze(2)
    # Two equal columns, not one: a one-column product goes to a matrix-vector kernel for a single set and to a
    # batched matrix product for several, which round differently, and the search's ties must not depend on the
    # batch (the costs of stiffnesses sharing a bandwidth pattern are equal in exact arithmetic).
    balloon = _row_sums(z, weighted.expand(-1, -1, 2))[..., 0] / (_SQRT_2PI * optwp)  # [K, L]
    yv = balloon * n.view(-1, 1) / (balloon * dt).sum(dim=1, keepdim=True)
    cg = yv**2 - 2 * yv * y_hist + 2 / _SQRT_2PI / optwp * y_hist
    return (cg * dt).sum(dim=1), yv


#: Below this grid length the products are many tiny matrices, which a batched matrix product runs slower than a
#: broadcast multiply and sum (ResNet-18's 4x4 maps: 16 points).
_BMM_MIN_LENGTH = 32


def _row_sums(z: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``sum_l z[k,i,l] columns[k,l,c]`` ``[K, L, C]`` for ``z [K,L,L]``, ``columns [K,L,C]``; either way the
    result of a set does not depend on the other sets in the batch."""
    if z.shape[-1] < _BMM_MIN_LENGTH:
        return (z.unsqueeze(3) * columns.unsqueeze(1)).sum(dim=2)
    return torch.bmm(z, columns)


def _gaussian_exponent(sq_diff: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """``exp(-sq_diff / (2 width^2))`` broadcast to ``[K, L, L]`` (``width`` ``[K,1,L]`` or ``[K,L,1]``)."""
    return torch.mul(sq_diff, -0.5 / width**2).exp_()


def _histc(x: torch.Tensor, valid: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """MATLAB ``histc(x, edges)`` of each row of ``x [K,N]`` (``valid`` entries only): ``[K, L]`` counts."""
    length = edges.shape[0]
    bins = torch.searchsorted(edges.contiguous(), x.contiguous(), right=True) - 1
    inside = valid & (bins >= 0) & (bins < length - 1)
    last = valid & (x == edges[-1])
    bins = torch.where(last, torch.full_like(bins, length - 1), bins)
    keep = inside | last
    counts = torch.zeros(x.shape[0], length, dtype=x.dtype, device=x.device)
    return counts.scatter_add_(1, torch.where(keep, bins, torch.zeros_like(bins)), keep.to(x.dtype))


def _group_kde(x: torch.Tensor, valid: torch.Tensor, t: torch.Tensor, tin: torch.Tensor,
               n_bandwidths: int) -> tuple[torch.Tensor, torch.Tensor]:
    dt = float((t[1:] - t[:-1]).min())
    span = float(tin.max() - tin.min())
    y_hist = _histc(x, valid, t - dt / 2) / dt  # [K, L]
    n = (y_hist * dt).sum(dim=1)
    win = _logexp(torch.linspace(float(_ilogexp(torch.tensor(5 * dt, dtype=x.dtype))),
                                 float(_ilogexp(torch.tensor(span, dtype=x.dtype))), n_bandwidths, dtype=x.dtype))
    win = win.to(x.device)
    spectra: dict[int, torch.Tensor] = {}
    c = torch.stack([(lambda yh, w: yh**2 - 2 * yh * y_hist + 2 / _SQRT_2PI / w * y_hist)(
        _fft_smooth(y_hist, float(w) / dt, spectra), float(w)) for w in win], dim=1)  # [K, M, L]
    spectra = {}
    optws = torch.stack([win[_fft_smooth(c, float(w) / dt, spectra).argmin(dim=1)] for w in win], dim=1)  # [K, M, L]

    sq_diff = (t.view(-1, 1) - t.view(1, -1)) ** 2  # [L, L]
    k_sets = x.shape[0]
    a = torch.full((k_sets,), 1e-12, dtype=x.dtype, device=x.device)
    b = torch.ones_like(a)
    c1 = (_PHI - 1) * a + (2 - _PHI) * b
    c2 = (2 - _PHI) * a + (_PHI - 1) * b
    f1, _ = _cost(y_hist, n, sq_diff, dt, optws, win, c1)
    f2, _ = _cost(y_hist, n, sq_diff, dt, optws, win, c2)
    active = torch.ones(k_sets, dtype=torch.bool, device=x.device)
    ran = torch.zeros_like(active)
    estimate = torch.full_like(y_hist, float("nan"))
    for _ in range(29):
        active = active & ((b - a).abs() > 1e-5 * (c1.abs() + c2.abs()))
        if not bool(active.any()):
            break
        left = f1 < f2  # NaN costs compare False: the else branch, as in MATLAB
        new_b = torch.where(left, c2, b)
        new_a = torch.where(left, a, c1)
        new_c1 = torch.where(left, (_PHI - 1) * a + (2 - _PHI) * c2, c2)
        new_c2 = torch.where(left, c1, (2 - _PHI) * c1 + (_PHI - 1) * b)
        g = torch.where(left, new_c1, new_c2)
        # Only the sets still searching are evaluated (the others keep their values below).
        rows = active.nonzero().flatten()
        cost = torch.full_like(g, float("nan"))
        yv = torch.zeros_like(y_hist)
        cost[rows], yv[rows] = _cost(y_hist[rows], n[rows], sq_diff, dt, optws[rows], win, g[rows])
        new_f1 = torch.where(left, cost, f2)
        new_f2 = torch.where(left, f1, cost)
        a, b = torch.where(active, new_a, a), torch.where(active, new_b, b)
        c1, c2 = torch.where(active, new_c1, c1), torch.where(active, new_c2, c2)
        f1, f2 = torch.where(active, new_f1, f1), torch.where(active, new_f2, f2)
        estimate = torch.where(active.view(-1, 1), yv / (yv * dt).sum(dim=1, keepdim=True), estimate)
        ran = ran | active
    if t.shape[0] != tin.shape[0]:
        estimate = _interp1(t, estimate, tin)
    return estimate, ran


def _interp1(t: torch.Tensor, y: torch.Tensor, tin: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``y [K, L]`` given at ``t [L]`` onto ``tin [L0]`` (inside ``t``'s range)."""
    right = torch.searchsorted(t.contiguous(), tin.contiguous(), right=False).clamp(1, t.shape[0] - 1)
    left = right - 1
    weight = ((tin - t[left]) / (t[right] - t[left])).view(1, -1)
    return y[:, left] * (1 - weight) + y[:, right] * weight


def adaptive_kde(samples: torch.Tensor, tin: torch.Tensor, n_bandwidths: int = 10,
                 chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(density [K, L0], ok [K])`` of each row of ``samples [K,N]`` on the grid ``tin [L0]`` (module docstring).

    Samples outside ``[min tin, max tin]`` are left out, as in the MATLAB code. Sets are computed ``chunk`` at a
    time (``None``: as many as keep the ``[K, L, L]`` temporaries near 8 MB, at most 512; larger blocks fall out of a CPU's
    cache and run slower per set). ``ok`` is False where the MATLAB
    code would have returned nothing (its search did not run); those rows are NaN.
    """
    x = samples.detach().to(torch.float64)
    tin = tin.detach().to(torch.float64).to(x.device)
    lo, hi = float(tin.min()), float(tin.max())
    valid = (x >= lo) & (x <= hi)
    # The smallest positive gap between sorted in-range samples (inf where there is none).
    ordered = torch.sort(torch.where(valid, x, torch.full_like(x, float("inf"))), dim=1).values
    gaps = ordered[:, 1:] - ordered[:, :-1]
    gaps = torch.where(torch.isfinite(gaps) & (gaps > 0), gaps, torch.full_like(gaps, float("inf")))
    dt_samp = gaps.amin(dim=1) if gaps.shape[1] else torch.full((x.shape[0],), float("inf"), dtype=x.dtype)
    step = float((tin[1:] - tin[:-1]).min())
    span = hi - lo
    lengths = torch.where(torch.isfinite(dt_samp) & (dt_samp > step),
                          torch.clamp(torch.ceil(span / dt_samp), max=1e3), torch.zeros_like(dt_samp)).long()
    density = torch.full((x.shape[0], tin.shape[0]), float("nan"), dtype=x.dtype, device=x.device)
    ok = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for length in torch.unique(lengths).tolist():
        grid = tin if length == 0 else torch.linspace(lo, hi, int(length), dtype=x.dtype, device=x.device)
        if grid.shape[0] < 2:
            continue  # a one-point grid: MATLAB's min(diff(t)) is empty and the code fails
        group = (lengths == length).nonzero().flatten()
        # Chunks keep the [K, L, L] temporaries of the cost within about 8 MB and at most 512 sets (faster per set on
        # a CPU: 4096 sets of a 16-point grid ran 1.3x slower per set than 512).
        step = chunk or max(8, min(512, (1 << 20) // (grid.shape[0] ** 2)))
        for start in range(0, group.shape[0], step):
            rows = group[start:start + step]
            estimate, ran = _group_kde(x[rows], valid[rows], grid, tin, n_bandwidths)
            density[rows], ok[rows] = estimate, ran
    return density, ok


def count_peaks(y: torch.Tensor) -> torch.Tensor:
    """Local maxima of each row of ``y [K, L]`` (``[K]`` long): samples higher than both neighbours, a flat top
    counted once, the ends never (MATLAB ``findpeaks``, scipy ``find_peaks``). Rows with NaN count 0."""
    d = torch.sign(y[:, 1:] - y[:, :-1])
    positions = torch.arange(d.shape[1], device=y.device).expand_as(d)
    last_nonzero = torch.where(d != 0, positions, torch.full_like(positions, -1)).cummax(dim=1).values
    carried = torch.where(last_nonzero >= 0, d.gather(1, last_nonzero.clamp(min=0)), torch.zeros_like(d))
    peaks = ((carried[:, :-1] > 0) & (d[:, 1:] < 0)).sum(dim=1)
    return torch.where(torch.isnan(y).any(dim=1), torch.zeros_like(peaks), peaks)
