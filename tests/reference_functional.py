"""An independent, functional restatement of the reference network (docs/architecture.md §3-§7) for parity tests.

Written from the specification, not from udm_fast's modules: each function takes an
official-layout state dict (keys of docs/architecture.md §13) and computes the forward pass with
torch.nn.functional only. SFT layers resize the condition inside every layer, as the
reference does (udm_fast hoists that per level).
"""

import torch
import torch.nn.functional as F


def official_key_layout(filters=64, c_l=4, cond=8, dim=256, gdim=256, head=2, tail=2, ndf=None, disc_c=3):
    """{sub-network: {key: shape}} of the authors' checkpoint, enumerated from docs/architecture.md §13 and §4-§9."""

    def block(prefix, cin, cout, k):
        return {
            f"{prefix}.conv.weight": (cout, cin, k, k),
            f"{prefix}.conv.bias": (cout,),
            f"{prefix}.norm.weight": (cout,),
            f"{prefix}.norm.bias": (cout,),
            f"{prefix}.norm.running_mean": (cout,),
            f"{prefix}.norm.running_var": (cout,),
            f"{prefix}.norm.num_batches_tracked": (),
        }

    short = {}
    for i, (cin, cout, k) in enumerate(
        [
            (3, dim // 4, 3),
            (dim // 4, dim // 4, 1),
            (dim // 4, dim // 2, 3),
            (dim // 2, dim // 2, 1),
            (dim // 2, dim, 3),
            (dim, dim, 1),
        ]
    ):
        short.update(block(f"LPE_l.{i}", cin, cout, k))
    net_e = dict(short)
    for i, (cin, cout) in enumerate([(3, dim // 4), (dim // 4, dim // 4), (dim // 4, dim // 2), (dim // 2, dim)]):
        net_e.update(block(f"LPE_p.{i}", cin, cout, 3))
    net_e.update(
        {
            "last_mlp.0.weight": (dim, 2 * dim),
            "last_mlp.0.bias": (dim,),
            "last_mlp.2.weight": (gdim, dim),
            "last_mlp.2.bias": (gdim,),
        }
    )
    net_el = dict(short)
    for i, (cin, cout) in enumerate([(3, dim // 4), (dim // 4, dim // 4), (dim // 4, dim // 2), (dim // 2, dim // 2)]):
        net_el.update(block(f"LPE_p.{i}", cin, cout, 3))
    net_el.update(
        {
            "LPE_p.4.weight": (dim // 2, dim, 3, 3),
            "LPE_p.4.bias": (dim,),
            "last_mlp.0.weight": (dim, 2 * dim, 1, 1),
            "last_mlp.0.bias": (dim,),
            "last_mlp.2.weight": (c_l, dim, 1, 1),
            "last_mlp.2.bias": (c_l,),
        }
    )

    net_g = {
        "conv.weight": (cond, c_l + gdim, 3, 3),
        "conv.bias": (cond,),
        "net.map_head.conv2d.weight": (cond, cond, 3, 3),
        "net.conv_first.conv2d.weight": (filters, 3, 3, 3),
    }
    k1, k2, k3 = filters, 2 * filters, 4 * filters
    for group, n, c in (
        ("blocks1", 4, k1),
        ("blocks2", 3, k2),
        ("blocks3", 2, k3),
        ("blocks2_", 3, k2),
        ("blocks1_", 4, k1),
    ):
        r, m = (cond + c) // 4, (c + cond) // 2
        for i in range(n):
            p = f"net.{group}.{i}"
            for s in ("sft1", "sft2"):
                net_g.update(
                    {
                        f"{p}.{s}.convs_gamma.0.conv2d.weight": (r, cond, 1, 1),
                        f"{p}.{s}.convs_gamma.1.conv2d.weight": (c, r, 1, 1),
                        f"{p}.{s}.convs_beta.0.conv2d.weight": (r, cond + 1, 1, 1),
                        f"{p}.{s}.convs_beta.1.conv2d.weight": (c, r, 1, 1),
                        f"{p}.{s}.spatial_gamma.transform_map.0.weight": (cond, m, 2, 2),
                        f"{p}.{s}.spatial_gamma.transform_map.2.weight": (m, m, 3, 3),
                        f"{p}.{s}.spatial_gamma.transform_x.weight": (m, c, 3, 3),
                        f"{p}.{s}.spatial_gamma.deconv.weight": (m, c, 2, 2),
                        f"{p}.{s}.spatial_gamma.deconv.bias": (c,),
                    }
                )
            net_g.update({f"{p}.conv1.conv2d.weight": (c, c, 3, 3), f"{p}.conv2.conv2d.weight": (c, c, 3, 3)})
    net_g.update(
        {
            "net.conv_down1.conv2d.weight": (k2, k1, 4, 4),
            "net.conv_down2.conv2d.weight": (k3, k2, 4, 4),
            "net.conv_up2.tconv2d.weight": (k3, k2, 4, 4),
            "net.conv_up1.tconv2d.weight": (k2, k1, 4, 4),
            "net.conv_skip2.conv2d.weight": (k2, 2 * k2, 3, 3),
            "net.conv_skip1.conv2d.weight": (k1, 2 * k1, 3, 3),
            "net.conv_last.conv2d.weight": (3, k1, 1, 1),
        }
    )

    def bottleneck(c):
        # coder tables: their length (here 3, an unset table) is fixed by update(), so shapes vary
        keys = {
            "model.quantiles": (c, 1, 3),
            "model.target": (3,),
            "model.likelihood_lower_bound.bound": (1,),
            "model._offset": (c,),
            "model._quantized_cdf": (c, 3),
            "model._cdf_length": (c,),
        }
        shapes_m = [(c, 3, 1), (c, 3, 3), (c, 3, 3), (c, 3, 3), (c, 1, 3)]
        for i, s in enumerate(shapes_m):
            keys[f"model.matrices.{i}"] = s
            keys[f"model.biases.{i}"] = (c, s[1], 1)
            if i < 4:
                keys[f"model.factors.{i}"] = (c, s[1], 1)
        return keys

    net_c = bottleneck(gdim)
    for name, n in (("head", head), ("tail", tail)):
        for i in range(n):
            net_c.update(
                {
                    f"{name}.layers.{i}.block.0.weight": (gdim // 4, gdim),
                    f"{name}.layers.{i}.block.0.bias": (gdim // 4,),
                    f"{name}.layers.{i}.block.2.weight": (gdim, gdim // 4),
                    f"{name}.layers.{i}.block.2.bias": (gdim,),
                }
            )
    layout = {"netE": net_e, "netE_loc": net_el, "netG": net_g, "netCprs": net_c, "netCprs_loc": bottleneck(c_l)}
    if ndf is not None:
        widths = [disc_c, ndf, 2 * ndf, 4 * ndf, 8 * ndf, 16 * ndf, 32 * ndf]
        net_p = {f"main.{2 * i}.weight": (widths[i + 1], widths[i], 4, 4) for i in range(6)}
        net_p.update({"output.weight": (1, 32 * ndf), "output.bias": (1,)})
        layout["netP"] = net_p
    return layout


# ----------------------------------------------------------------------------- encoders


def _block(sd, p, x, stride, pad):
    x = F.conv2d(F.pad(x, (pad,) * 4), sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], stride=stride)
    x = F.batch_norm(
        x,
        sd[f"{p}.norm.running_mean"],
        sd[f"{p}.norm.running_var"],
        sd[f"{p}.norm.weight"],
        sd[f"{p}.norm.bias"],
        training=False,
        eps=1e-5,
    )
    return F.leaky_relu(x, 0.2)


def _short(sd, y):
    for i, (s, p) in enumerate([(1, 1), (1, 0), (2, 1), (1, 0), (1, 1), (1, 0)]):
        y = _block(sd, f"LPE_l.{i}", y, s, p)
    return y


def lpe(sd, y):
    """Global code e_g [B, 256] of y in [-1, 1] (eval-mode batch norm)."""
    p = _block(sd, "LPE_p.0", y, 1, 0)
    for i in (1, 2, 3):
        p = _block(sd, f"LPE_p.{i}", p, 1, 1)
    v = torch.cat((p.mean((2, 3)), _short(sd, y).mean((2, 3))), 1)
    v = F.leaky_relu(F.linear(v, sd["last_mlp.0.weight"], sd["last_mlp.0.bias"]), 0.1)
    return F.linear(v, sd["last_mlp.2.weight"], sd["last_mlp.2.bias"])


def lpel(sd, y):
    """Local map e_l [B, c_l, H/2, W/2] of y in [-1, 1]."""
    p = _block(sd, "LPE_p.0", y, 1, 0)
    for i in (1, 2, 3):
        p = _block(sd, f"LPE_p.{i}", p, 1, 1)
    p = F.avg_pool2d(F.conv_transpose2d(p, sd["LPE_p.4.weight"], sd["LPE_p.4.bias"]), 2)
    f = torch.cat((p, _short(sd, y)), 1)
    f = F.leaky_relu(F.conv2d(f, sd["last_mlp.0.weight"], sd["last_mlp.0.bias"]), 0.1)
    return torch.sigmoid(F.conv2d(f, sd["last_mlp.2.weight"], sd["last_mlp.2.bias"]))


# ----------------------------------------------------------------------------- generator


def _resize(c, size):
    return c if tuple(c.shape[-2:]) == tuple(size) else F.interpolate(c, size=size, mode="bilinear", align_corners=True)


def ida(sd, p, x, m):
    a = F.conv_transpose2d(m, sd[f"{p}.transform_map.0.weight"], stride=2)
    a = F.conv2d(F.leaky_relu(a, 0.1), sd[f"{p}.transform_map.2.weight"], stride=2, padding=1)
    b = F.conv2d(x, sd[f"{p}.transform_x.weight"], stride=2, padding=1)
    return F.conv_transpose2d(a * b, sd[f"{p}.deconv.weight"], sd[f"{p}.deconv.bias"], stride=2)


def sft(sd, p, x, cond, z, act):
    h, w = x.shape[-2:]
    half, full = _resize(cond, (h // 2, w // 2)), _resize(cond, (h, w))
    gamma = F.conv2d(
        act(F.conv2d(full, sd[f"{p}.convs_gamma.0.conv2d.weight"])), sd[f"{p}.convs_gamma.1.conv2d.weight"]
    )
    beta = F.conv2d(
        act(F.conv2d(torch.cat((full, z), 1), sd[f"{p}.convs_beta.0.conv2d.weight"])),
        sd[f"{p}.convs_beta.1.conv2d.weight"],
    )
    return x * (1 + gamma) + beta + ida(sd, f"{p}.spatial_gamma", x, half)


def generator(sd, x, e_g, e_l, noise):
    """ŷ [B, 3, H, W] (internal domain) from x in [-1, 1]; ``noise`` = list of the 32 maps, consumed in order."""
    noise = list(noise)
    lrelu = lambda t: F.leaky_relu(t, 0.01)  # noqa: E731
    g = e_g[:, :, None, None].repeat(1, 1, e_l.shape[2], e_l.shape[3])
    cond = F.conv2d(torch.cat((e_l, g), 1), sd["conv.weight"], sd["conv.bias"], padding=1)
    cond = F.conv2d(F.relu(cond), sd["net.map_head.conv2d.weight"], padding=1)

    def blocks(group, n, y):
        for i in range(n):
            act = F.relu if (group == "blocks1_" and i == n - 1) else lrelu
            p = f"net.{group}.{i}"
            t = sft(sd, f"{p}.sft1", y, cond, noise.pop(0), act)
            t = F.conv2d(act(t), sd[f"{p}.conv1.conv2d.weight"], padding=1)
            t = sft(sd, f"{p}.sft2", t, cond, noise.pop(0), act)
            y = F.conv2d(act(t), sd[f"{p}.conv2.conv2d.weight"], padding=1) + y
        return y

    y = F.conv2d(x * 2 - 1, sd["net.conv_first.conv2d.weight"], padding=1)
    s1 = y = blocks("blocks1", 4, y)
    s2 = y = blocks("blocks2", 3, F.conv2d(y, sd["net.conv_down1.conv2d.weight"], stride=2, padding=1))
    y = blocks("blocks3", 2, F.conv2d(y, sd["net.conv_down2.conv2d.weight"], stride=2, padding=1))
    y = F.conv_transpose2d(y, sd["net.conv_up2.tconv2d.weight"], stride=2, padding=1)
    y = F.conv2d(lrelu(torch.cat((y, s2), 1)), sd["net.conv_skip2.conv2d.weight"], padding=1)
    y = blocks("blocks2_", 3, y)
    y = F.conv_transpose2d(y, sd["net.conv_up1.tconv2d.weight"], stride=2, padding=1)
    y = F.conv2d(lrelu(torch.cat((y, s1), 1)), sd["net.conv_skip1.conv2d.weight"], padding=1)
    y = blocks("blocks1_", 4, y)
    assert not noise, "noise list longer than the number of SFT layers"
    return F.conv2d(lrelu(y), sd["net.conv_last.conv2d.weight"])


# ----------------------------------------------------------------------------- compressors


def compressor(sd, e):
    """Eval-mode compressor output via compressai's EntropyBottleneck and the residual MLPs."""
    from compressai.entropy_models import EntropyBottleneck

    c = sd["model.quantiles"].shape[0]
    eb = EntropyBottleneck(c)
    state = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    for name in ("_offset", "_quantized_cdf", "_cdf_length"):  # compressai sizes its coder tables on update()
        getattr(eb, name).resize_(state[name].shape)
    eb.load_state_dict(state)
    eb.eval()

    def mlp(name, v):
        i = 0
        while f"{name}.layers.{i}.block.0.weight" in sd:
            p = f"{name}.layers.{i}.block"
            v = v + F.linear(
                F.relu(F.linear(v, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"])), sd[f"{p}.2.weight"], sd[f"{p}.2.bias"]
            )
            i += 1
        return v

    out, lik = eb(mlp("head", e))
    return mlp("tail", out), lik
