"""A line-by-line numpy transcription of ADVISE's ``ADVISEkernel.m`` (dehshibi/ADVISE), one sample set at a time,
loops as written: the reference the batched torch version (``impactx.attribution.adaptive_kde``) is tested against.
MATLAB's 1-based indices become 0-based; ``histc``, ``find(..., 1, 'last')``, ``min`` (first index) and
``interp1`` are spelled out."""

from __future__ import annotations

import numpy as np


def logexp(x):
    x = np.atleast_1d(np.asarray(x, dtype=float))
    return np.where(x < 1e2, np.log(1 + np.exp(np.minimum(x, 1e2))), x)


def ilogexp(x):
    x = np.atleast_1d(np.asarray(x, dtype=float))
    return np.where(x < 1e2, np.log(np.exp(np.minimum(x, 1e2)) - 1), x)


def fftkernel(x, w):
    length = len(x)
    lmax = length + 3 * w
    n = int(2 ** np.ceil(np.log2(lmax)))
    big_x = np.fft.fft(x, n)
    f = np.concatenate([-np.arange(0, n // 2 + 1), np.arange(n // 2 - 1, 0, -1)]) / n
    k = np.exp(-0.5 * (w * 2 * np.pi * f) ** 2)
    return np.real(np.fft.ifft(big_x * k, n))[:length]


def gauss(x, w):
    return 1 / np.sqrt(2 * np.pi) / w * np.exp(-x**2 / 2 / w**2)


def histc(x, edges):
    counts = np.zeros(len(edges))
    for value in x:
        if value == edges[-1]:
            counts[-1] += 1
            continue
        for k in range(len(edges) - 1):
            if edges[k] <= value < edges[k + 1]:
                counts[k] += 1
                break
    return counts


def cost_function(y_hist, n_samples, t, dt, optws, win, g):
    length = len(y_hist)
    optwv = np.zeros(length)
    for k in range(length):
        gs = optws[:, k] / win
        if g > gs.max():
            optwv[k] = win.min()
        elif g < gs.min():
            optwv[k] = win.max()
        else:
            idx = np.nonzero(gs >= g)[0][-1]
            optwv[k] = g * win[idx]
    optwp = np.zeros(length)
    for k in range(length):
        z = gauss(t[k] - t, optwv / g)
        optwp[k] = np.sum(optwv * z) / np.sum(z)
    nz = np.nonzero(y_hist != 0)[0]
    yv = np.zeros(length)
    for k in range(length):
        yv[k] = np.sum(y_hist[nz] * dt * gauss(t[k] - t[nz], optwp[k]))
    yv = yv * n_samples / np.sum(yv * dt)
    cg = yv**2 - 2 * yv * y_hist + 2 / np.sqrt(2 * np.pi) / optwp * y_hist
    return np.sum(cg * dt), yv, optwp


def advise_kernel(x, tin, m=10):
    """``y`` on ``tin``, or ``None`` where the MATLAB code's ``try`` fails."""
    x = np.asarray(x, dtype=float).ravel()
    tin = np.asarray(tin, dtype=float)
    span = tin.max() - tin.min()
    x_ab = x[(x >= tin.min()) & (x <= tin.max())]
    gaps = np.sort(np.diff(np.sort(x_ab)))
    positive = gaps[gaps != 0]
    dt_samp = positive[0] if len(positive) else None
    if dt_samp is not None and dt_samp > np.min(np.diff(tin)):
        t = np.linspace(tin.min(), tin.max(), int(min(np.ceil(span / dt_samp), 1e3)))
    else:
        t = tin
    if len(t) < 2:
        return None
    dt = np.min(np.diff(t))
    y_hist = histc(x_ab, t - dt / 2) / dt
    length = len(y_hist)
    n_samples = np.sum(y_hist * dt)
    win = logexp(np.linspace(ilogexp(5 * dt)[0], ilogexp(1 * span)[0], m))
    w_all = win
    c = np.zeros((m, length))
    for j in range(m):
        w = w_all[j]
        yh = fftkernel(y_hist, w / dt)
        c[j, :] = yh**2 - 2 * yh * y_hist + 2 / np.sqrt(2 * np.pi) / w * y_hist
    optws = np.zeros((m, length))
    for i in range(m):
        c_local = np.zeros((m, length))
        for j in range(m):
            c_local[j, :] = fftkernel(c[j, :], win[i] / dt)
        n = np.argmin(c_local, axis=0)
        optws[i, :] = w_all[n]
    tol = 1e-5
    a, b = 1e-12, 1.0
    phi = (np.sqrt(5) + 1) / 2
    c1 = (phi - 1) * a + (2 - phi) * b
    c2 = (2 - phi) * a + (phi - 1) * b
    f1 = cost_function(y_hist, n_samples, t, dt, optws, win, c1)[0]
    f2 = cost_function(y_hist, n_samples, t, dt, optws, win, c2)[0]
    k = 1
    yopt = None
    while abs(b - a) > tol * (abs(c1) + abs(c2)) and k < 30:
        if f1 < f2:
            b = c2
            c2 = c1
            c1 = (phi - 1) * a + (2 - phi) * b
            f2 = f1
            f1, yv1, _ = cost_function(y_hist, n_samples, t, dt, optws, win, c1)
            yopt = yv1 / np.sum(yv1 * dt)
        else:
            a = c1
            c1 = c2
            c2 = (2 - phi) * a + (phi - 1) * b
            f1 = f2
            f2, yv2, _ = cost_function(y_hist, n_samples, t, dt, optws, win, c2)
            yopt = yv2 / np.sum(yv2 * dt)
        k += 1
    if yopt is None:
        return None
    return np.interp(tin, t, yopt)
