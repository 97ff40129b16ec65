"""Triton kernels of the IDA layer, forward and backward, with the SFT prologue/epilogue as an option.

IDA(x, m) = ConvT2x2( Conv3x3s2(lrelu_0.1(ConvT2x2(m))) (.) Conv3x3s2(x) ) + b, evaluated per low-res
pixel n as GEMM -> Hadamard -> GEMM (docs/kernels.md §1):

    A  = sum_taps lrelu(m_tap Wu_pq) Wa_tap      [N_lo, Cm]   (t recomputed from m, never stored)
    Bx = sum_taps x_tap Wx_tap                   [N_lo, Cm]
    Y_pq = (A (.) Bx) Wo_pq + b                  [N_lo, C_out] per output parity (p, q)

With ``sft`` the output epilogue becomes out = x (1 + gamma) + beta + Y, gamma / beta being the
two 1x1 MLPs of the SFT layer evaluated per high-res pixel (never written to memory).

Forward: ``mid`` kernel (A, Bx; or their product when nothing is saved) + ``out`` kernel.
Backward: ``dp`` (dP = G4 Wo^T, dA = dP Bx, dBx = dP A), ``dx`` (parity-split dgrad of the
stride-2 3x3 conv, plus the SFT gradients), ``dmap`` (dt -> dm, dWu), three split-K ``wgrad``
GEMMs (dWx, dWa, dWo + db). Weight gradients are reduced deterministically from per-split
partials, or from per-program slots (fp32 atomics, each program only touching its own slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    autotune_enabled,
    check_runnable,
    dot_dtype,
    dot_precision,
    leaky,
    leaky_grad,
    load_cond_noise,
    lowres_block,
    lowres_coords,
    multiprocessor_count,
    on_device,
    pow2,
)

# ============================================================================ kernels
#
# Every GEMM runs as one flattened dynamic loop over (tap, channel chunk) (implicit GEMM, so Triton
# can pipeline across taps), with 2-D addresses rebuilt each iteration from 1-D int32 vectors
# (host code checks that every tensor has < 2**31 elements).


@triton.jit
def _mid_fwd_kernel(
    x_ptr,
    m_ptr,
    wu_ptr,
    wa_ptr,
    wx_ptr,
    a_ptr,
    bx_ptr,
    N_lo,
    Hl,
    Wl,
    C,
    Cc,
    Cm,
    s_xb,
    s_xc,
    s_xh,
    s_xw,
    s_mb,
    s_mc,
    s_mh,
    s_mw,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    STORE_PRODUCT: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_CC: tl.constexpr,
):
    """A and Bx (or A (.) Bx when STORE_PRODUCT) for BLOCK_P low-res pixels x BLOCK_N mid channels."""
    n, pmask, b, i, j = lowres_block(N_lo, Hl, Wl, BLOCK_P)
    kn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = kn < Cm
    cc = tl.arange(0, BLOCK_CC)
    kk = tl.arange(0, BLOCK_K)
    offs = n[:, None] * Cm + kn[None, :]
    omask = pmask[:, None] & nmask[None, :]

    # A = sum over taps (u, v) and input mid channels of t(2i+u-1, 2j+v-1) Wa_uv, where t is
    # lrelu_0.1(m Wu_pq) of low-res pixel (i+di, j+dj) at parity (pq): zero outside the image (padding)
    m_pix = b * s_mb + i * s_mh + j * s_mw
    chunks = tl.cdiv(Cm, BLOCK_K)
    acc_a = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
    for it in range(0, 9 * chunks):
        tap = it // chunks
        k0 = (it % chunks) * BLOCK_K
        u = tap // 3
        v = tap % 3
        di = (u + 1) // 2 - 1
        dj = (v + 1) // 2 - 1
        mvalid = pmask & (i + di >= 0) & (j + dj >= 0)
        m_tile = tl.load(
            m_ptr + (m_pix + di * s_mh + dj * s_mw)[:, None] + cc[None, :] * s_mc,
            mask=mvalid[:, None] & (cc[None, :] < Cc),
            other=0.0,
        ).to(DOT)
        kin = k0 + kk
        wu = tl.load(
            wu_ptr + (cc[:, None] * Cm + kin[None, :]) * 4 + (((u + 1) % 2) * 2 + (v + 1) % 2),
            mask=(cc[:, None] < Cc) & (kin[None, :] < Cm),
            other=0.0,
        ).to(DOT)
        t = leaky(tl.dot(m_tile, wu, input_precision=PREC), 0.1)
        wa = tl.load(
            wa_ptr + (tap * Cm + kin[:, None]) * Cm + kn[None, :], mask=(kin[:, None] < Cm) & nmask[None, :], other=0.0
        ).to(DOT)
        acc_a = tl.dot(t.to(DOT), wa, acc_a, input_precision=PREC)
    if not STORE_PRODUCT:
        tl.store(a_ptr + offs, acc_a.to(a_ptr.dtype.element_ty), mask=omask)

    # Bx = sum over taps and feature channels of x(2i+u-1, 2j+v-1) Wx_uv (zero padded)
    x_pix = b * s_xb + (2 * i) * s_xh + (2 * j) * s_xw
    chunks = tl.cdiv(C, BLOCK_K)
    acc_b = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
    for it in range(0, 9 * chunks):
        tap = it // chunks
        cin = (it % chunks) * BLOCK_K + kk
        dy = tap // 3 - 1
        dx = tap % 3 - 1
        xvalid = pmask & (2 * i + dy >= 0) & (2 * j + dx >= 0)
        xt = tl.load(
            x_ptr + (x_pix + dy * s_xh + dx * s_xw)[:, None] + cin[None, :] * s_xc,
            mask=xvalid[:, None] & (cin[None, :] < C),
            other=0.0,
        ).to(DOT)
        wx = tl.load(
            wx_ptr + (tap * C + cin[:, None]) * Cm + kn[None, :], mask=(cin[:, None] < C) & nmask[None, :], other=0.0
        ).to(DOT)
        acc_b = tl.dot(xt, wx, acc_b, input_precision=PREC)
    if STORE_PRODUCT:
        tl.store(a_ptr + offs, (acc_a * acc_b).to(a_ptr.dtype.element_ty), mask=omask)
    else:
        tl.store(bx_ptr + offs, acc_b.to(bx_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _out_fwd_kernel(
    a_ptr,
    bx_ptr,
    wo_ptr,
    bias_ptr,
    out_ptr,
    x_ptr,
    cond_ptr,
    noise_ptr,
    seed_ptr,
    w_gamma1_ptr,
    w_gamma2_ptr,
    w_beta1_ptr,
    w_beta2_ptr,
    N_lo,
    Hl,
    Wl,
    Cm,
    C_out,
    Cc,
    RD,
    slope,
    s_ob,
    s_oc,
    s_oh,
    s_ow,
    s_xb,
    s_xc,
    s_xh,
    s_xw,
    s_cb,
    s_cc,
    s_ch,
    s_cw,
    s_nb,
    s_nh,
    s_nw,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    A_IS_PRODUCT: tl.constexpr,
    SFT: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_CZ: tl.constexpr,
):
    """Y_pq = P Wo_pq + b for the 4 output parities of BLOCK_P low-res pixels x BLOCK_O channels;
    with SFT, out = x (1 + gamma) + beta + Y, gamma = w_gamma2 act(w_gamma1 cond),
    beta = w_beta2 act(w_beta1 [cond; z])."""
    n, pmask, b, i, j = lowres_block(N_lo, Hl, Wl, BLOCK_P)
    oo = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = oo < C_out
    smask = pmask[:, None] & omask[None, :]
    kk = tl.arange(0, BLOCK_K)
    czr = tl.arange(0, BLOCK_CZ)
    bias = tl.load(bias_ptr + oo, mask=omask, other=0.0).to(tl.float32)
    for pq in range(0, 4):
        p = pq // 2
        q = pq % 2
        y = tl.zeros((BLOCK_P, BLOCK_O), tl.float32) + bias[None, :]
        for k0 in range(0, Cm, BLOCK_K):
            kin = k0 + kk
            lmask = pmask[:, None] & (kin[None, :] < Cm)
            prod = tl.load(a_ptr + n[:, None] * Cm + kin[None, :], mask=lmask, other=0.0).to(tl.float32)
            if not A_IS_PRODUCT:
                prod = prod * tl.load(bx_ptr + n[:, None] * Cm + kin[None, :], mask=lmask, other=0.0).to(tl.float32)
            wo = tl.load(
                wo_ptr + (pq * Cm + kin[:, None]) * C_out + oo[None, :],
                mask=(kin[:, None] < Cm) & omask[None, :],
                other=0.0,
            ).to(DOT)
            y = tl.dot(prod.to(DOT), wo, y, input_precision=PREC)
        hy = 2 * i + p
        hx = 2 * j + q
        if SFT:
            cz = load_cond_noise(
                cond_ptr,
                noise_ptr,
                seed_ptr,
                b,
                hy,
                hx,
                pmask,
                Cc,
                2 * Hl,
                2 * Wl,
                s_cb,
                s_cc,
                s_ch,
                s_cw,
                s_nb,
                s_nh,
                s_nw,
                HAS_NOISE,
                BLOCK_CZ,
            ).to(DOT)
            gamma = tl.zeros((BLOCK_P, BLOCK_O), tl.float32)
            for r0 in range(0, RD, BLOCK_R):
                rr = r0 + tl.arange(0, BLOCK_R)
                w_gamma1_tile = tl.load(
                    w_gamma1_ptr + rr[None, :] * Cc + czr[:, None],
                    mask=(czr[:, None] < Cc) & (rr[None, :] < RD),
                    other=0.0,
                ).to(DOT)
                h1 = leaky(tl.dot(cz, w_gamma1_tile, input_precision=PREC), slope)
                w_gamma2_tile = tl.load(
                    w_gamma2_ptr + oo[None, :] * RD + rr[:, None], mask=(rr[:, None] < RD) & omask[None, :], other=0.0
                ).to(DOT)
                gamma = tl.dot(h1.to(DOT), w_gamma2_tile, gamma, input_precision=PREC)
            xv = tl.load(
                x_ptr + (b * s_xb + hy * s_xh + hx * s_xw)[:, None] + oo[None, :] * s_xc, mask=smask, other=0.0
            ).to(tl.float32)
            y += xv * (1.0 + gamma)
            for r0 in range(0, RD, BLOCK_R):  # beta accumulates straight into the output tile
                rr = r0 + tl.arange(0, BLOCK_R)
                w_beta1_tile = tl.load(
                    w_beta1_ptr + rr[None, :] * (Cc + 1) + czr[:, None],
                    mask=(czr[:, None] <= Cc) & (rr[None, :] < RD),
                    other=0.0,
                ).to(DOT)
                h3 = leaky(tl.dot(cz, w_beta1_tile, input_precision=PREC), slope)
                w_beta2_tile = tl.load(
                    w_beta2_ptr + oo[None, :] * RD + rr[:, None], mask=(rr[:, None] < RD) & omask[None, :], other=0.0
                ).to(DOT)
                y = tl.dot(h3.to(DOT), w_beta2_tile, y, input_precision=PREC)
        tl.store(
            out_ptr + (b * s_ob + hy * s_oh + hx * s_ow)[:, None] + oo[None, :] * s_oc,
            y.to(out_ptr.dtype.element_ty),
            mask=smask,
        )


@triton.jit
def _dp_bwd_kernel(
    g_ptr,
    wo_ptr,
    a_ptr,
    bx_ptr,
    da_ptr,
    dbx_ptr,
    N_lo,
    Hl,
    Wl,
    Cm,
    C_out,
    s_gb,
    s_gc,
    s_gh,
    s_gw,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dP = sum_pq G_pq Wo_pq^T (K = 4 C_out), then dA = dP (.) Bx and dBx = dP (.) A."""
    n, pmask, b, i, j = lowres_block(N_lo, Hl, Wl, BLOCK_P)
    kn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = kn < Cm
    kk = tl.arange(0, BLOCK_K)
    g_pix = b * s_gb + (2 * i) * s_gh + (2 * j) * s_gw
    chunks = tl.cdiv(C_out, BLOCK_K)
    acc = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
    for it in range(0, 4 * chunks):
        pq = it // chunks
        cin = (it % chunks) * BLOCK_K + kk
        g = tl.load(
            g_ptr + (g_pix + (pq // 2) * s_gh + (pq % 2) * s_gw)[:, None] + cin[None, :] * s_gc,
            mask=pmask[:, None] & (cin[None, :] < C_out),
            other=0.0,
        ).to(DOT)
        wo = tl.load(
            wo_ptr + (pq * Cm + kn[None, :]) * C_out + cin[:, None],
            mask=(cin[:, None] < C_out) & nmask[None, :],
            other=0.0,
        ).to(DOT)
        acc = tl.dot(g, wo, acc, input_precision=PREC)
    offs = n[:, None] * Cm + kn[None, :]
    omask = pmask[:, None] & nmask[None, :]
    a = tl.load(a_ptr + offs, mask=omask, other=0.0).to(tl.float32)
    bx = tl.load(bx_ptr + offs, mask=omask, other=0.0).to(tl.float32)
    tl.store(da_ptr + offs, (acc * bx).to(da_ptr.dtype.element_ty), mask=omask)
    tl.store(dbx_ptr + offs, (acc * a).to(dbx_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _parity_dgrad(
    acc,
    src_ptr,
    w_ptr,
    b,
    i,
    j,
    pmask,
    p,
    q,
    Hl,
    Wl,
    Cm,
    N_w,
    ncol,
    kk,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc += the stride-2 3x3 conv's input gradient at high-res parity (p, q): rows of parity 0
    get tap u=1 of low-res row i; parity 1 gets u=2 of row i and u=0 of row i+1 (same for columns),
    i.e. 1/2/2/4 taps. src: [N_lo, Cm] output gradient; w: packed [9, N_w, Cm]; ncol: output columns."""
    chunks = tl.cdiv(Cm, BLOCK_K)
    for it in range(0, (1 + p) * (1 + q) * chunks):
        t = it // chunks
        kin = (it % chunks) * BLOCK_K + kk
        tu = t // (1 + q)
        tv = t % (1 + q)
        li = i + tu
        lj = j + tv
        valid = pmask & (li < Hl) & (lj < Wl)
        src = (b * Hl + li) * Wl + lj
        d = tl.load(
            src_ptr + src[:, None] * Cm + kin[None, :], mask=valid[:, None] & (kin[None, :] < Cm), other=0.0
        ).to(DOT)
        tap = (1 + p) * (1 - tu) * 3 + (1 + q) * (1 - tv)
        w = tl.load(
            w_ptr + (tap * N_w + ncol[None, :]) * Cm + kin[:, None],
            mask=(kin[:, None] < Cm) & (ncol[None, :] < N_w),
            other=0.0,
        ).to(DOT)
        acc = tl.dot(d, w, acc, input_precision=PREC)
    return acc


@triton.jit
def _dx_bwd_kernel(
    dbx_ptr,
    wx_ptr,
    dx_ptr,
    g_ptr,
    x_ptr,
    cond_ptr,
    noise_ptr,
    seed_ptr,
    w_gamma1_ptr,
    w_gamma2_ptr,
    w_beta1_ptr,
    w_beta2_ptr,
    dcond_ptr,
    dnoise_ptr,
    dw_gamma1_ptr,
    dw_gamma2_ptr,
    dw_beta1_ptr,
    dw_beta2_ptr,
    N_lo,
    Hl,
    Wl,
    C,
    Cm,
    Cc,
    RD,
    slope,
    slot_stride,
    s_db,
    s_dc,
    s_dh,
    s_dw,
    s_gb,
    s_gc,
    s_gh,
    s_gw,
    s_xb,
    s_xc,
    s_xh,
    s_xw,
    s_cb,
    s_cc,
    s_ch,
    s_cw,
    s_nb,
    s_nh,
    s_nw,
    s_qb,
    s_qc,
    s_qh,
    s_qw,
    s_zb,
    s_zh,
    s_zw,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    SFT: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_RD: tl.constexpr,
    BLOCK_CZ: tl.constexpr,
):
    """Persistent over low-res tiles: dx at each high-res parity from dBx (``_parity_dgrad``); with SFT
    also + G (1 + gamma), and the SFT gradients: dcond (and dz), and per-program slots of dW1..dW4
    (fp32 atomics; program ``pid`` owns row ``pid`` of the [nprog, slot_stride] slot buffer that
    dw*_ptr point into)."""
    pid = tl.program_id(0)
    cc_ar = tl.arange(0, BLOCK_C)
    kk = tl.arange(0, BLOCK_K)
    rr = tl.arange(0, BLOCK_RD)
    czr = tl.arange(0, BLOCK_CZ)
    rmask = rr < RD
    w_gamma1_mask = (czr[:, None] < Cc) & rmask[None, :]
    w_beta1_mask = (czr[:, None] <= Cc) & rmask[None, :]
    for tile in range(pid, tl.cdiv(N_lo, BLOCK_P), tl.num_programs(0)):
        n = tile * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = n < N_lo
        b, i, j = lowres_coords(n, Hl, Wl)
        for pq in range(0, 4):
            p = pq // 2
            q = pq % 2
            hy = 2 * i + p
            hx = 2 * j + q
            if SFT:
                cz = load_cond_noise(
                    cond_ptr,
                    noise_ptr,
                    seed_ptr,
                    b,
                    hy,
                    hx,
                    pmask,
                    Cc,
                    2 * Hl,
                    2 * Wl,
                    s_cb,
                    s_cc,
                    s_ch,
                    s_cw,
                    s_nb,
                    s_nh,
                    s_nw,
                    HAS_NOISE,
                    BLOCK_CZ,
                ).to(DOT)
                w_gamma1_tile = tl.load(
                    w_gamma1_ptr + rr[None, :] * Cc + czr[:, None], mask=w_gamma1_mask, other=0.0
                ).to(DOT)
                w_beta1_tile = tl.load(
                    w_beta1_ptr + rr[None, :] * (Cc + 1) + czr[:, None], mask=w_beta1_mask, other=0.0
                ).to(DOT)
                act1 = leaky(tl.dot(cz, w_gamma1_tile, input_precision=PREC), slope).to(DOT)
                act3 = leaky(tl.dot(cz, w_beta1_tile, input_precision=PREC), slope).to(DOT)
                dact1 = tl.zeros((BLOCK_P, BLOCK_RD), tl.float32)
                dact3 = tl.zeros((BLOCK_P, BLOCK_RD), tl.float32)
            for c0 in range(0, C, BLOCK_C):
                cin = c0 + cc_ar
                cmask = cin < C
                smask = pmask[:, None] & cmask[None, :]
                acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
                if SFT:
                    g = tl.load(
                        g_ptr + (b * s_gb + hy * s_gh + hx * s_gw)[:, None] + cin[None, :] * s_gc, mask=smask, other=0.0
                    ).to(tl.float32)
                    wmask = rmask[:, None] & cmask[None, :]
                    w_gamma2_tile = tl.load(w_gamma2_ptr + cin[None, :] * RD + rr[:, None], mask=wmask, other=0.0).to(
                        DOT
                    )
                    acc = g * (1.0 + tl.dot(act1, w_gamma2_tile, input_precision=PREC))
                    xv = tl.load(
                        x_ptr + (b * s_xb + hy * s_xh + hx * s_xw)[:, None] + cin[None, :] * s_xc, mask=smask, other=0.0
                    ).to(tl.float32)
                    dgam = (g * xv).to(DOT)
                    dact1 = tl.dot(dgam, tl.trans(w_gamma2_tile), dact1, input_precision=PREC)
                    slot = pid * slot_stride + cin[:, None] * RD + rr[None, :]
                    tl.atomic_add(
                        dw_gamma2_ptr + slot,
                        tl.dot(tl.trans(dgam), act1, input_precision=PREC),
                        mask=cmask[:, None] & rmask[None, :],
                    )
                    gd = g.to(DOT)
                    w_beta2_tile = tl.load(w_beta2_ptr + cin[None, :] * RD + rr[:, None], mask=wmask, other=0.0).to(DOT)
                    dact3 = tl.dot(gd, tl.trans(w_beta2_tile), dact3, input_precision=PREC)
                    tl.atomic_add(
                        dw_beta2_ptr + slot,
                        tl.dot(tl.trans(gd), act3, input_precision=PREC),
                        mask=cmask[:, None] & rmask[None, :],
                    )
                acc = _parity_dgrad(
                    acc, dbx_ptr, wx_ptr, b, i, j, pmask, p, q, Hl, Wl, Cm, C, cin, kk, DOT, PREC, BLOCK_K
                )
                tl.store(
                    dx_ptr + (b * s_db + hy * s_dh + hx * s_dw)[:, None] + cin[None, :] * s_dc,
                    acc.to(dx_ptr.dtype.element_ty),
                    mask=smask,
                )
            if SFT:  # hidden-layer gradients (pre-activations recomputed) -> dcond, dz, dW1, dW3
                dh1 = leaky_grad(dact1, tl.dot(cz, w_gamma1_tile, input_precision=PREC), slope).to(DOT)
                dh3 = leaky_grad(dact3, tl.dot(cz, w_beta1_tile, input_precision=PREC), slope).to(DOT)
                dcz = tl.dot(dh1, tl.trans(w_gamma1_tile), input_precision=PREC)
                dcz = tl.dot(dh3, tl.trans(w_beta1_tile), dcz, input_precision=PREC)
                tl.store(
                    dcond_ptr + (b * s_qb + hy * s_qh + hx * s_qw)[:, None] + czr[None, :] * s_qc,
                    dcz.to(dcond_ptr.dtype.element_ty),
                    mask=pmask[:, None] & (czr[None, :] < Cc),
                )
                if HAS_NOISE:
                    dz = tl.sum(tl.where(czr[None, :] == Cc, dcz, 0.0), axis=1)
                    tl.store(
                        dnoise_ptr + b * s_zb + hy * s_zh + hx * s_zw, dz.to(dnoise_ptr.dtype.element_ty), mask=pmask
                    )
                tl.atomic_add(
                    dw_gamma1_ptr + pid * slot_stride + rr[:, None] * Cc + czr[None, :],
                    tl.dot(tl.trans(dh1), cz, input_precision=PREC),
                    mask=rmask[:, None] & (czr[None, :] < Cc),
                )
                tl.atomic_add(
                    dw_beta1_ptr + pid * slot_stride + rr[:, None] * (Cc + 1) + czr[None, :],
                    tl.dot(tl.trans(dh3), cz, input_precision=PREC),
                    mask=rmask[:, None] & (czr[None, :] <= Cc),
                )


@triton.jit
def _dmap_bwd_kernel(
    da_ptr,
    wa_ptr,
    wu_ptr,
    m_ptr,
    dm_ptr,
    dwu_ptr,
    N_lo,
    Hl,
    Wl,
    Cm,
    Cc,
    s_mb,
    s_mc,
    s_mh,
    s_mw,
    s_db,
    s_dc,
    s_dh,
    s_dw,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_CC: tl.constexpr,
):
    """Persistent over low-res tiles: dt (``_parity_dgrad`` of Wa) -> dt_pre = dt lrelu'(t) ->
    dm = sum_pq dt_pre Wu_pq^T, and per-program slots of dWu = m^T dt_pre (fp32 atomics)."""
    pid = tl.program_id(0)
    cc = tl.arange(0, BLOCK_CC)
    kk = tl.arange(0, BLOCK_K)
    for tile in range(pid, tl.cdiv(N_lo, BLOCK_P), tl.num_programs(0)):
        n = tile * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = n < N_lo
        b, i, j = lowres_coords(n, Hl, Wl)
        m_tile = tl.load(
            m_ptr + (b * s_mb + i * s_mh + j * s_mw)[:, None] + cc[None, :] * s_mc,
            mask=pmask[:, None] & (cc[None, :] < Cc),
            other=0.0,
        ).to(DOT)
        dm = tl.zeros((BLOCK_P, BLOCK_CC), tl.float32)
        for pq in range(0, 4):
            for n0 in range(0, Cm, BLOCK_N):
                kn = n0 + tl.arange(0, BLOCK_N)
                dt = _parity_dgrad(
                    tl.zeros((BLOCK_P, BLOCK_N), tl.float32),
                    da_ptr,
                    wa_ptr,
                    b,
                    i,
                    j,
                    pmask,
                    pq // 2,
                    pq % 2,
                    Hl,
                    Wl,
                    Cm,
                    Cm,
                    kn,
                    kk,
                    DOT,
                    PREC,
                    BLOCK_K,
                )
                wmask = (cc[:, None] < Cc) & (kn[None, :] < Cm)
                wu = tl.load(wu_ptr + (cc[:, None] * Cm + kn[None, :]) * 4 + pq, mask=wmask, other=0.0).to(DOT)
                dt_pre = leaky_grad(dt, tl.dot(m_tile, wu, input_precision=PREC), 0.1).to(DOT)
                dm = tl.dot(dt_pre, tl.trans(wu), dm, input_precision=PREC)
                tl.atomic_add(
                    dwu_ptr + ((pid * Cc + cc[:, None]) * Cm + kn[None, :]) * 4 + pq,
                    tl.dot(tl.trans(m_tile), dt_pre, input_precision=PREC),
                    mask=wmask,
                )
        tl.store(
            dm_ptr + (b * s_db + i * s_dh + j * s_dw)[:, None] + cc[None, :] * s_dc,
            dm.to(dm_ptr.dtype.element_ty),
            mask=pmask[:, None] & (cc[None, :] < Cc),
        )


@triton.jit
def _wgrad_kernel(
    l1_ptr,
    l2_ptr,
    r_ptr,
    wu_ptr,
    part_ptr,
    bias_part_ptr,
    N_lo,
    Hl,
    Wl,
    M,
    N,
    Cc,
    s_rb,
    s_rc,
    s_rh,
    s_rw,
    K_PER_SPLIT,
    NTAPS: tl.constexpr,
    L_PRODUCT: tl.constexpr,
    R_FROM_MAP: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_CC: tl.constexpr,
):
    """Split-K weight gradient part[split, m, n, tap] = sum_pixels L[pix, m] R_tap[pix, n].

    L = l1 (or l1 (.) l2), [N_lo, M] row-major. R_tap = a high-res map (strides s_r*) read at
    (2i+dy, 2j+dx), dy, dx in {-1, 0, 1} (NTAPS=9) or {0, 1} (NTAPS=4); with R_FROM_MAP it is
    t = lrelu_0.1(m Wu) recomputed from the low-res map m. BIAS_GRAD adds column sums of R."""
    pid0 = tl.program_id(0)
    split = tl.program_id(1)
    tap = pid0 % NTAPS
    tiles_m = tl.cdiv(M, BLOCK_M)
    tm = (pid0 // NTAPS) % tiles_m
    tn = (pid0 // NTAPS) // tiles_m
    if NTAPS == 9:
        dy = tap // 3 - 1
        dx = tap % 3 - 1
    else:
        dy = tap // 2
        dx = tap % 2
    km = tm * BLOCK_M + tl.arange(0, BLOCK_M)
    cn = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    kmask = km < M
    cnmask = cn < N
    kk = tl.arange(0, BLOCK_K)
    start = split * K_PER_SPLIT
    end = tl.minimum(start + K_PER_SPLIT, N_lo)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    col_sum = tl.zeros((BLOCK_N,), tl.float32)
    if R_FROM_MAP:
        cc = tl.arange(0, BLOCK_CC)
        wu = tl.load(
            wu_ptr + (cc[:, None] * N + cn[None, :]) * 4 + (((dy + 2) % 2) * 2 + (dx + 2) % 2),
            mask=(cc[:, None] < Cc) & cnmask[None, :],
            other=0.0,
        ).to(DOT)
    for n0 in range(start, end, BLOCK_K):
        n = n0 + kk
        pmask = n < end
        b, i, j = lowres_coords(n, Hl, Wl)
        lmask = pmask[:, None] & kmask[None, :]
        lhs = tl.load(l1_ptr + n[:, None] * M + km[None, :], mask=lmask, other=0.0)
        if L_PRODUCT:
            lhs = lhs.to(tl.float32) * tl.load(l2_ptr + n[:, None] * M + km[None, :], mask=lmask, other=0.0).to(
                tl.float32
            )
        if R_FROM_MAP:
            mi = i + ((dy + 2) // 2 - 1)
            mj = j + ((dx + 2) // 2 - 1)
            valid = pmask & (mi >= 0) & (mj >= 0)
            m_tile = tl.load(
                r_ptr + (b * s_rb + mi * s_rh + mj * s_rw)[:, None] + cc[None, :] * s_rc,
                mask=valid[:, None] & (cc[None, :] < Cc),
                other=0.0,
            ).to(DOT)
            rhs = leaky(tl.dot(m_tile, wu, input_precision=PREC), 0.1)
        else:
            hy = 2 * i + dy
            hx = 2 * j + dx
            valid = pmask & (hy >= 0) & (hx >= 0)
            rhs = tl.load(
                r_ptr + (b * s_rb + hy * s_rh + hx * s_rw)[:, None] + cn[None, :] * s_rc,
                mask=valid[:, None] & cnmask[None, :],
                other=0.0,
            )
        if BIAS_GRAD:
            col_sum += tl.sum(rhs.to(tl.float32), axis=0)
        acc = tl.dot(tl.trans(lhs.to(DOT)), rhs.to(DOT), acc, input_precision=PREC)
    tl.store(
        part_ptr + ((split * M + km[:, None]) * N + cn[None, :]) * NTAPS + tap,
        acc,
        mask=kmask[:, None] & cnmask[None, :],
    )
    if BIAS_GRAD:
        tl.store(bias_part_ptr + (split * NTAPS + tap) * N + cn, col_sum, mask=cnmask & (tm == 0))


# ============================================================================ launch policy


@dataclass
class SftArgs:
    """The SFT extras around the IDA: cond [B, Cc, H, W], noise [B, 1, H, W] or a Philox seed
    (int64 tensor, 1 element), the 1x1 MLP weights as 2-D [rd, Cc], [C, rd], [rd, Cc + 1], [C, rd]
    and the activation slope (0 = ReLU)."""

    cond: torch.Tensor
    noise: Optional[torch.Tensor]
    seed: Optional[torch.Tensor]
    w_gamma1: torch.Tensor
    w_gamma2: torch.Tensor
    w_beta1: torch.Tensor
    w_beta2: torch.Tensor
    slope: float


def _config(kernel: str, dims: dict) -> dict:
    """Launch parameters (block sizes, warps, stages) per kernel; GPU values target an H100.

    The interpreter's cost is per executed tl op, so it gets few large pixel blocks; channel blocks
    stay at 64 (32 for the SFT hidden width) so that C >= 128 still runs every chunk loop and mask."""
    cm, cc = dims["Cm"], dims["Cc"]
    if INTERPRET:
        base = dict(BLOCK_P=256, BLOCK_N=128, BLOCK_K=64)
        return {
            "mid": dict(base, BLOCK_CC=pow2(cc)),
            "out": dict(BLOCK_P=256, BLOCK_O=64, BLOCK_K=64, BLOCK_R=32, BLOCK_CZ=pow2(cc + 1)),
            "dp": base,
            "dx": dict(BLOCK_P=256, BLOCK_C=64, BLOCK_K=64, BLOCK_RD=pow2(dims["RD"]), BLOCK_CZ=pow2(cc + 1)),
            "dmap": dict(base, BLOCK_CC=pow2(cc)),
            "wgrad": dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=512, BLOCK_CC=pow2(cc)),
        }[kernel]
    # H100 defaults, checked by compile_check (sm_90 cubins: registers / spills), not yet timed on a GPU
    bn = min(64, pow2(cm))
    wide = dims["ELEM"] == 4  # float32 operands (TF32) take twice the registers of 16-bit ones
    if kernel == "mid":
        return dict(BLOCK_P=64, BLOCK_N=bn, BLOCK_K=64, BLOCK_CC=pow2(cc), num_warps=4, num_stages=3)
    if kernel == "out":
        return dict(
            BLOCK_P=64,
            BLOCK_O=32 if wide else 64,
            BLOCK_K=bn,
            BLOCK_R=min(32, pow2(dims["RD"])),
            BLOCK_CZ=pow2(cc + 1),
            num_warps=8 if dims["SFT"] else 4,
            num_stages=2,
        )
    if kernel == "dp":
        return dict(BLOCK_P=64, BLOCK_N=bn, BLOCK_K=64, num_warps=4, num_stages=3)
    if kernel == "dx":
        # the [BLOCK_C, BLOCK_RD] weight-gradient tiles of the SFT MLPs bound BLOCK_C
        brd = pow2(dims["RD"])
        block_c = 64 if brd <= 32 and not wide else 32 if brd <= 64 and not wide else 16
        return dict(
            BLOCK_P=32 if brd <= 64 else 16,
            BLOCK_C=block_c if dims["SFT"] else 64,
            BLOCK_K=bn,
            BLOCK_RD=brd,
            BLOCK_CZ=pow2(cc + 1),
            num_warps=8,
            num_stages=2,
        )
    if kernel == "dmap":
        return dict(BLOCK_P=32, BLOCK_N=bn, BLOCK_K=bn, BLOCK_CC=pow2(cc), num_warps=4, num_stages=2)
    if kernel == "wgrad":
        return dict(BLOCK_M=bn, BLOCK_N=64, BLOCK_K=64, BLOCK_CC=pow2(cc), num_warps=4, num_stages=3)
    raise KeyError(kernel)


def _autotune_space(kernel: str, dims: dict) -> list:
    """Candidate configs for UDM_FAST_TRITON_AUTOTUNE=1: the default plus block-size/warp variants."""
    base = _config(kernel, dims)
    space = [base]
    for key, alternatives in {
        "mid": {"BLOCK_P": (32, 128), "BLOCK_N": (32,), "num_warps": (8,)},
        "out": {"BLOCK_P": (32, 128), "BLOCK_O": (32, 128), "num_warps": (8,)},
        "dp": {"BLOCK_P": (32, 128), "BLOCK_K": (32,), "num_warps": (8,)},
        "dx": {"BLOCK_C": (32,), "num_warps": (4, 8)},
        "dmap": {"BLOCK_P": (16, 64)},
        "wgrad": {"BLOCK_M": (32,), "BLOCK_N": (32, 128), "num_warps": (8,)},
    }[kernel].items():
        for value in alternatives:
            if base[key] != value:
                space.append(dict(base, **{key: value}))
    return space


_TUNED: dict = {}


def _launch(name: str, kernel, grid, dims: dict, *args, reset=(), **constexprs):
    """Runs ``kernel`` with its default config, or autotuned over ``_autotune_space`` (opt-in).
    ``grid`` maps a config dict to the launch grid; ``reset`` names fp32 atomic accumulators."""
    check_runnable(args[0], constexprs.get("DOT"))
    with on_device(args[0]):
        if not autotune_enabled():
            cfg = _config(name, dims)
            kernel[grid(cfg)](*args, **constexprs, **cfg)
            return
        key = (name, tuple(sorted(dims.items())))
        if key not in _TUNED:
            configs = [
                triton.Config(
                    {k: v for k, v in c.items() if k.startswith("BLOCK")},
                    num_warps=c["num_warps"],
                    num_stages=c["num_stages"],
                )
                for c in _autotune_space(name, dims)
            ]
            _TUNED[key] = triton.autotune(configs=configs, key=["N_lo"], reset_to_zero=list(reset))(kernel)
        _TUNED[key][lambda meta: grid(meta)](*args, **constexprs)


def _pack(w: torch.Tensor, perm, shape, dtype) -> torch.Tensor:
    """Weight permuted to a tap-major GEMM layout, contiguous, in the compute dtype (one copy)."""
    return torch.empty(shape, device=w.device, dtype=dtype).copy_(w.permute(*perm).reshape(shape))


def _reach(t: torch.Tensor) -> int:
    """1 + the largest element offset the strides of ``t`` address (0 when empty)."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) if t.numel() else 0


def _dims(x, m, w_x, w_out, sft: Optional[SftArgs], compute_dtype: torch.dtype, maps=()) -> dict:
    """Problem sizes (launch arguments and config keys); raises when int32 offsets could overflow in
    x, m, the SFT maps, the other feature ``maps`` (out, grad_out, dx, ...) or the [N_lo, Cm] mids."""
    tensors = [x, m, *maps] + ([sft.cond] + ([sft.noise] if sft.noise is not None else []) if sft is not None else [])
    b, c, h, w = x.shape
    n_lo = b * (h // 2) * (w // 2)
    if max([_reach(t) for t in tensors] + [b * w_out.shape[1] * h * w, n_lo * w_x.shape[0]]) >= 2**31:
        raise ValueError(
            "Triton IDA/SFT kernels index with int32: every tensor must span fewer than 2**31 "
            f"elements (x is {list(x.shape)}, the output has {w_out.shape[1]} channels); split the "
            "batch"
        )
    return dict(
        B=b,
        C=c,
        H=h,
        W=w,
        Hl=h // 2,
        Wl=w // 2,
        N_lo=n_lo,
        Cc=m.shape[1],
        Cm=w_x.shape[0],
        C_out=w_out.shape[1],
        RD=sft.w_gamma1.shape[0] if sft is not None else 16,
        SFT=sft is not None,
        ELEM=compute_dtype.itemsize,
    )


def _sft_operands(sft: Optional[SftArgs], placeholder: torch.Tensor):
    """Pointers, strides and flags of the SFT extras (placeholders when the layer is a plain IDA)."""
    if sft is None:
        return (placeholder,) * 7, (0,) * 7, 0.0, False
    noise = sft.noise if sft.noise is not None else placeholder
    seed = sft.seed if sft.seed is not None else placeholder
    noise_strides = (noise.stride(0), noise.stride(2), noise.stride(3)) if sft.noise is not None else (0, 0, 0)
    return (
        (sft.cond, noise, seed, sft.w_gamma1, sft.w_gamma2, sft.w_beta1, sft.w_beta2),
        tuple(sft.cond.stride()) + noise_strides,
        float(sft.slope),
        sft.noise is not None,
    )


# ============================================================================ host entry points


def forward(
    x,
    m,
    w_up,
    w_map,
    w_x,
    w_out,
    b_out,
    *,
    compute_dtype: torch.dtype,
    out: torch.Tensor,
    save_mid: bool,
    sft: Optional[SftArgs] = None,
):
    """Writes IDA(x, m) (or the SFT layer output) into ``out`` (shape of x, any strides).

    Returns (a, bx): the [N_lo, Cm] mid tensors in compute dtype for the backward, or None when
    ``save_mid`` is False (the kernels then pass A (.) Bx through one scratch buffer)."""
    d = _dims(x, m, w_x, w_out, sft, compute_dtype, maps=(out,))
    if d["N_lo"] == 0:
        return tuple(x.new_empty((0, d["Cm"]), dtype=compute_dtype) for _ in range(2)) if save_mid else None
    DOT, PREC = dot_dtype(compute_dtype), dot_precision(compute_dtype)
    cm, c, c_out = d["Cm"], d["C"], d["C_out"]
    wx_p = _pack(w_x, (2, 3, 1, 0), (9, c, cm), compute_dtype)
    wa_p = _pack(w_map, (2, 3, 1, 0), (9, cm, cm), compute_dtype)
    wo_p = _pack(w_out, (2, 3, 0, 1), (4, cm, c_out), compute_dtype)
    wu = w_up.contiguous()
    a = x.new_empty((d["N_lo"], cm), dtype=compute_dtype)
    bx = x.new_empty((d["N_lo"], cm), dtype=compute_dtype) if save_mid else a
    _launch(
        "mid",
        _mid_fwd_kernel,
        lambda cfg: (triton.cdiv(d["N_lo"], cfg["BLOCK_P"]), triton.cdiv(cm, cfg["BLOCK_N"])),
        d,
        x,
        m,
        wu,
        wa_p,
        wx_p,
        a,
        bx,
        d["N_lo"],
        d["Hl"],
        d["Wl"],
        c,
        d["Cc"],
        cm,
        *x.stride(),
        *m.stride(),
        DOT=DOT,
        PREC=PREC,
        STORE_PRODUCT=not save_mid,
    )
    sft_ptrs, sft_strides, slope, has_noise = _sft_operands(sft, b_out)
    _launch(
        "out",
        _out_fwd_kernel,
        lambda cfg: (triton.cdiv(d["N_lo"], cfg["BLOCK_P"]), triton.cdiv(c_out, cfg["BLOCK_O"])),
        d,
        a,
        bx,
        wo_p,
        b_out,
        out,
        x,
        *sft_ptrs,
        d["N_lo"],
        d["Hl"],
        d["Wl"],
        cm,
        c_out,
        d["Cc"],
        d["RD"],
        slope,
        *out.stride(),
        *x.stride(),
        *sft_strides,
        DOT=DOT,
        PREC=PREC,
        A_IS_PRODUCT=not save_mid,
        SFT=sft is not None,
        HAS_NOISE=has_noise,
    )
    return (a, bx) if save_mid else None


def _persistent_programs(device, n_lo: int, slot_bytes: int) -> int:
    """Grid of the persistent kernels: enough programs to fill the GPU, bounded so that their
    per-program weight-gradient slots stay within ~16 MB."""
    sms = multiprocessor_count(device)
    per_sm = 1 if INTERPRET else 4  # interpreted: 2 programs, so that each one loops over several tiles
    budget = max(sms, min(per_sm * sms, (16 << 20) // max(slot_bytes, 1)))
    return max(1, min(triton.cdiv(n_lo, 16), budget))


def _wgrad(d: dict, l1, l2, r, wu, m_dim, n_dim, ntaps, *, r_from_map=False, bias_grad=False, compute_dtype) -> tuple:
    """sum over splits of the split-K weight gradient -> ([m_dim, n_dim, ntaps] fp32, bias [n_dim] or None)."""
    sms = multiprocessor_count(l1.device)
    base = ntaps * triton.cdiv(m_dim, 64) * triton.cdiv(n_dim, 64)
    split = max(1, min(triton.cdiv(4 * sms, base), triton.cdiv(d["N_lo"], 512)))
    split = min(split, d["N_lo"])
    k_per_split = triton.cdiv(d["N_lo"], split)
    part = l1.new_empty((split, m_dim, n_dim, ntaps), dtype=torch.float32)
    bias_part = l1.new_empty((split, ntaps, n_dim), dtype=torch.float32) if bias_grad else part
    _launch(
        "wgrad",
        _wgrad_kernel,
        lambda cfg: (ntaps * triton.cdiv(m_dim, cfg["BLOCK_M"]) * triton.cdiv(n_dim, cfg["BLOCK_N"]), split),
        dict(d, M=m_dim, N=n_dim, NTAPS=ntaps),
        l1,
        l2 if l2 is not None else l1,
        r,
        wu if wu is not None else l1,
        part,
        bias_part,
        d["N_lo"],
        d["Hl"],
        d["Wl"],
        m_dim,
        n_dim,
        d["Cc"],
        *r.stride(),
        k_per_split,
        NTAPS=ntaps,
        L_PRODUCT=l2 is not None,
        R_FROM_MAP=r_from_map,
        BIAS_GRAD=bias_grad,
        DOT=dot_dtype(compute_dtype),
        PREC=dot_precision(compute_dtype),
    )
    return part.sum(0), (bias_part.sum((0, 1)) if bias_grad else None)


def backward(
    grad_out,
    x,
    m,
    w_up,
    w_map,
    w_x,
    w_out,
    a,
    bx,
    *,
    compute_dtype: torch.dtype,
    grads: dict,
    sft: Optional[SftArgs] = None,
) -> dict:
    """Gradients of IDA / the SFT layer. ``grads`` holds preallocated outputs: dx (like x), dm
    (like m) and, with SFT, dcond (like cond) and dnoise (like noise, when explicit). Returns the
    weight gradients as float32 tensors in the weights' shapes: w_up, w_map, w_x, w_out, b_out
    (+ w_gamma1, w_gamma2, w_beta1, w_beta2 for SFT, as 2-D [out, in])."""
    d = _dims(x, m, w_x, w_out, sft, compute_dtype, maps=(grad_out, *grads.values()))
    cm, c, c_out, cc, rd = d["Cm"], d["C"], d["C_out"], d["Cc"], d["RD"]
    if d["N_lo"] == 0:
        for t in grads.values():
            t.zero_()
        out = {"w_up": w_up.new_zeros(w_up.shape, dtype=torch.float32)}
        for key, w in (("w_map", w_map), ("w_x", w_x), ("w_out", w_out)):
            out[key] = w.new_zeros(w.shape, dtype=torch.float32)
        out["b_out"] = w_out.new_zeros((c_out,), dtype=torch.float32)
        if sft is not None:
            out.update(
                {
                    k: getattr(sft, k).new_zeros(getattr(sft, k).shape, dtype=torch.float32)
                    for k in ("w_gamma1", "w_gamma2", "w_beta1", "w_beta2")
                }
            )
        return out
    DOT, PREC = dot_dtype(compute_dtype), dot_precision(compute_dtype)
    wx_p = _pack(w_x, (2, 3, 1, 0), (9, c, cm), compute_dtype)
    wa_p = _pack(w_map, (2, 3, 1, 0), (9, cm, cm), compute_dtype)
    wo_p = _pack(w_out, (2, 3, 0, 1), (4, cm, c_out), compute_dtype)
    wu = w_up.contiguous()

    da = a.new_empty(a.shape)
    dbx = a.new_empty(a.shape)
    _launch(
        "dp",
        _dp_bwd_kernel,
        lambda cfg: (triton.cdiv(d["N_lo"], cfg["BLOCK_P"]), triton.cdiv(cm, cfg["BLOCK_N"])),
        d,
        grad_out,
        wo_p,
        a,
        bx,
        da,
        dbx,
        d["N_lo"],
        d["Hl"],
        d["Wl"],
        cm,
        c_out,
        *grad_out.stride(),
        DOT=DOT,
        PREC=PREC,
    )

    # dx (+ SFT gradients), persistent with per-program fp32 slots for dW1..dW4
    slot = (2 * c * rd + rd * cc + rd * (cc + 1)) if sft is not None else 0
    nprog = _persistent_programs(x.device, d["N_lo"], 4 * slot)
    slots = (
        x.new_zeros((nprog, slot), dtype=torch.float32) if sft is not None else x.new_zeros((1,), dtype=torch.float32)
    )
    if sft is not None:
        sizes = (rd * cc, c * rd, rd * (cc + 1), c * rd)
        dw1_s, dw2_s, dw3_s, dw4_s = slots.split(sizes, dim=1)
        sft_ptrs, sft_strides, slope, has_noise = _sft_operands(sft, x)
        dcond = grads["dcond"]
        dnoise = grads.get("dnoise", dcond)
        dnoise_strides = (dnoise.stride(0), dnoise.stride(2), dnoise.stride(3)) if has_noise else (0, 0, 0)
        extra = (grad_out, x, *sft_ptrs, dcond, dnoise, dw1_s, dw2_s, dw3_s, dw4_s)
        extra_strides = (*grad_out.stride(), *x.stride(), *sft_strides, *dcond.stride(), *dnoise_strides)
    else:
        slope, has_noise = 0.0, False
        extra = (x,) * 15
        extra_strides = (0,) * 22
    dx = grads["dx"]
    _launch(
        "dx",
        _dx_bwd_kernel,
        lambda cfg: (nprog,),
        d,
        dbx,
        wx_p,
        dx,
        *extra,
        d["N_lo"],
        d["Hl"],
        d["Wl"],
        c,
        cm,
        cc,
        rd,
        slope,
        slots.stride(0),
        *dx.stride(),
        *extra_strides,
        reset=("dw_gamma1_ptr", "dw_gamma2_ptr", "dw_beta1_ptr", "dw_beta2_ptr") if sft is not None else (),
        DOT=DOT,
        PREC=PREC,
        SFT=sft is not None,
        HAS_NOISE=has_noise,
    )

    nprog_map = _persistent_programs(x.device, d["N_lo"], 4 * cc * cm * 4)
    dwu_slots = x.new_zeros((nprog_map, cc, cm, 4), dtype=torch.float32)
    dm = grads["dm"]
    _launch(
        "dmap",
        _dmap_bwd_kernel,
        lambda cfg: (nprog_map,),
        d,
        da,
        wa_p,
        wu,
        m,
        dm,
        dwu_slots,
        d["N_lo"],
        d["Hl"],
        d["Wl"],
        cm,
        cc,
        *m.stride(),
        *dm.stride(),
        reset=("dwu_ptr",),
        DOT=DOT,
        PREC=PREC,
    )

    dwx, _ = _wgrad(d, dbx, None, x, None, cm, c, 9, compute_dtype=compute_dtype)
    dwa, _ = _wgrad(d, da, None, m, wu, cm, cm, 9, r_from_map=True, compute_dtype=compute_dtype)
    dwo, dbias = _wgrad(d, a, bx, grad_out, None, cm, c_out, 4, bias_grad=True, compute_dtype=compute_dtype)
    out = {
        "w_up": dwu_slots.sum(0).view(cc, cm, 2, 2),
        "w_map": dwa.view(cm, cm, 3, 3),
        "w_x": dwx.view(cm, c, 3, 3),
        "w_out": dwo.view(cm, c_out, 2, 2),
        "b_out": dbias,
    }
    if sft is not None:
        w_gamma1, w_gamma2, w_beta1, w_beta2 = (
            part.sum(0) for part in slots.split(sizes, dim=1)
        )  # separate tensors, no aliasing
        out.update(
            w_gamma1=w_gamma1.view(rd, cc),
            w_gamma2=w_gamma2.view(c, rd),
            w_beta1=w_beta1.view(rd, cc + 1),
            w_beta2=w_beta2.view(c, rd),
        )
    return out
