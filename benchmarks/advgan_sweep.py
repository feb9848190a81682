"""AdvGAN recipe sweep: a self-contained re-implementation of AdvGAN's training loop
(``advex.attacks.generative``: same generator, discriminator, losses, Adam, cosine schedule),
runnable on a machine without advex (a GPU box), many configurations in parallel. Used once to
choose the recipe; the target measurement is ``benchmarks/advgan.py`` on CPU with advex itself.

    python benchmarks/advgan_sweep.py prep DIR          # here: data + zoo CNN weights into DIR
    python benchmarks/advgan_sweep.py configs DIR       # DIR/sweep1.json, DIR/sweep2.json
    python DIR/../advgan_sweep.py run DIR/sweep2.json OUT.json 16   # there (SWEEP_DEV=cuda|cpu)

``prep`` writes ``mnist.npz`` (mnist5k train and test; all 70,000 MNIST digits minus every digit
equal to an mnist5k test digit) and ``model.safetensors`` (the zoo CNN). Results:
``benchmarks/results/2026-11-29-advgan-gpu-sweep{1,2}.json``.
"""

import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

D = os.environ.get("SWEEP_DIR", os.path.dirname(os.path.abspath(__file__)))


class Normalize(nn.Module):
    def __init__(s):
        super().__init__()
        s.register_buffer("mean", torch.zeros(1))
        s.register_buffer("std", torch.ones(1))

    def forward(s, x):
        return (x - s.mean.view(1, -1, 1, 1)) / s.std.view(1, -1, 1, 1)


def smallcnn():
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


class Gen(nn.Module):
    def __init__(s, c=1, w=8, blocks=2):
        super().__init__()
        s.stem = nn.Conv2d(c, w, 3, padding=1)
        s.down = nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)
        s.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(2 * w, 2 * w, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            )
            for _ in range(blocks)
        )
        s.up = nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1)
        s.head = nn.Conv2d(w, c, 3, padding=1)
        nn.init.zeros_(s.head.weight)
        nn.init.zeros_(s.head.bias)

    def forward(s, x):
        z = F.relu(s.stem(x))
        z = F.relu(s.down(z))
        for b in s.blocks:
            z = F.relu(z + b(z))
        return s.head(F.relu(s.up(z)))


class Disc(nn.Module):
    def __init__(s, c=1, w=16):
        super().__init__()
        s.c1 = nn.Conv2d(c, w, 4, 2, 1)
        s.c2 = nn.Conv2d(w, 2 * w, 4, 2, 1)
        s.h = nn.Linear(2 * w, 1)

    def forward(s, x):
        z = F.leaky_relu(s.c1(x), 0.2)
        z = F.leaky_relu(s.c2(z), 0.2)
        return s.h(z.mean((2, 3))).squeeze(1)


def perturb(cfg, raw, x, eps):
    if cfg["param"] == "clamp":
        return (x + eps * torch.tanh(raw)).clamp(0, 1)
    lo = torch.clamp(-x, min=-eps)
    hi = torch.clamp(1 - x, max=eps)
    if cfg["param"] == "interval":  # zero at raw=0, exact box+ball, no clipping
        t = torch.tanh(raw)
        return x + torch.where(t > 0, hi, -lo) * t
    if cfg["param"] == "sigmoid":
        return x + lo + (hi - lo) * torch.sigmoid(raw)
    raise ValueError(cfg["param"])


def adv_loss(cfg, logits, y):
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf"))
    if cfg["loss"] == "margin":
        return (own - other.amax(1)).clamp_min(-cfg["kappa"]).mean()
    if cfg["loss"] == "ce_runnerup":
        r = other.argmax(1).detach()
        m = (own - other.amax(1)) > -cfg["kappa"]
        l = F.cross_entropy(logits, r, reduction="none")
        return (l * m).mean()
    if cfg["loss"] == "log1mp":
        lp = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
        return -torch.log1p(-lp.exp().clamp(max=1 - 1e-6)).mean()
    raise ValueError(cfg["loss"])


def run(cfg, dev):
    torch.manual_seed(cfg.get("seed", 0))
    z = np.load(f"{D}/mnist.npz")
    to = lambda a: torch.tensor(a, dtype=torch.float32, device=dev)[:, None] / 255.0  # noqa: E731
    if cfg["data"] == "5k":
        xt, yt = to(z["tr"]), torch.tensor(z["ytr"], device=dev)
    else:
        xt, yt = to(z["full"]), torch.tensor(z["yfull"], device=dev)
    if cfg.get("ntrain"):
        xt, yt = xt[: cfg["ntrain"]], yt[: cfg["ntrain"]]
    xe, ye = to(z["te"]), torch.tensor(z["yte"], device=dev)
    m = smallcnn().to(dev)
    m.load_state_dict(load_file(f"{D}/model.safetensors", device=str(dev)))
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    eps = cfg.get("eps", 0.3)
    g = Gen(1, cfg["width"], cfg["blocks"]).to(dev)
    d = Disc().to(dev)
    go = torch.optim.Adam(g.parameters(), lr=cfg["lr"], betas=tuple(cfg.get("betas", (0.9, 0.999))))
    do = torch.optim.Adam(d.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
    bs = cfg["batch"]
    total = cfg["samples"] // bs
    c = cfg["c"] if cfg["c"] is not None else 0.5 * eps * 28
    with torch.no_grad():
        clean_wrong = m(xe).argmax(1) != ye

    def evaluate():
        g.eval()
        with torch.no_grad():
            xa = perturb(cfg, g(xe), xe, eps)
            assert (
                float((xa - xe).abs().max()) <= eps + 1e-5
                and float(xa.min()) >= 0
                and float(xa.max()) <= 1
            )
            s = float(((m(xa).argmax(1) != ye) | clean_wrong).float().mean())
            sat = float(((xa - xe).abs() > 0.9 * eps).float().mean())
        g.train()
        return s, sat

    curve = []
    step = 0
    gen = torch.Generator(device="cpu").manual_seed(cfg.get("seed", 0))
    t0 = time.time()
    warm = cfg.get("alpha_warmup", 0)
    while step < total:
        perm = torch.randperm(len(xt), generator=gen).to(dev)
        for i in range(0, len(xt) - bs + 1, bs):
            if step >= total:
                break
            frac = step / total
            lr = cfg["lr"] * (
                0.5 * (1 + math.cos(math.pi * frac)) if cfg["schedule"] == "cosine" else 1.0
            )
            for o in (go, do):
                for pg in o.param_groups:
                    pg["lr"] = lr
            idx = perm[i : i + bs]
            xb, yb = xt[idx], yt[idx]
            raw = g(xb)
            xa = perturb(cfg, raw, xb, eps)
            alpha = cfg["alpha"] * (min(1.0, frac / warm) if warm else 1.0)
            if cfg["alpha"] > 0:
                dl = ((d(xb) - 1) ** 2).mean() + (d(xa.detach()) ** 2).mean()
                do.zero_grad()
                dl.backward()
                do.step()
                gan = ((d(xa) - 1) ** 2).mean()
            else:
                gan = torch.zeros((), device=dev)
            logits = m(xa)
            hinge = ((xa - xb).flatten(1).norm(dim=1) - c).clamp_min(0).mean()
            loss = adv_loss(cfg, logits, yb) + alpha * gan + cfg["beta"] * hinge
            if cfg.get("rawpen"):
                loss = (
                    loss
                    + cfg["rawpen"] * (raw.abs() - cfg.get("rawthr", 3)).clamp_min(0).pow(2).mean()
                )
            go.zero_grad()
            loss.backward()
            go.step()
            step += 1
            if step % max(1, total // 8) == 0 or step == total:
                s, sat = evaluate()
                curve.append((step * bs, round(s, 4), round(sat, 3)))
    return {
        "cfg": cfg,
        "final": curve[-1][1],
        "best": max(c_[1] for c_ in curve),
        "curve": curve,
        "gpu_s": time.time() - t0,
    }


def worker(args):
    i, cfg = args
    torch.set_num_threads(1)
    try:
        r = run(cfg, torch.device(os.environ.get("SWEEP_DEV", "cuda")))
    except Exception as e:
        r = {"cfg": cfg, "error": repr(e)}
    print(json.dumps(r), flush=True)
    return r


def prep(out: str) -> None:
    from advex import data, zoo

    os.makedirs(out, exist_ok=True)
    xtr, ytr = data.mnist5k("train").tensors()
    xte, yte = data.mnist5k("test").tensors()
    root = os.environ.get("ADVEX_DATASETS", "../shared/datasets") + "/mnist"
    xf, yf = data.mnist(root, "all").tensors()

    def u8(x):
        return (x.squeeze(1).numpy() * 255).round().astype(np.uint8)

    tr8, te8, f8 = u8(xtr), u8(xte), u8(xf)
    test_keys = {a.tobytes() for a in te8}
    keep = np.array([a.tobytes() not in test_keys for a in f8])
    np.savez_compressed(
        f"{out}/mnist.npz",
        tr=tr8,
        ytr=ytr.numpy(),
        te=te8,
        yte=yte.numpy(),
        full=f8[keep],
        yfull=yf.numpy()[keep],
    )
    from safetensors.torch import save_file

    sd = zoo.load("mnist-smallcnn", progress=False).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, f"{out}/model.safetensors")


def configs(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    base = dict(
        param="clamp",
        loss="margin",
        kappa=0,
        alpha=0.1,
        beta=1,
        c=None,
        width=8,
        blocks=2,
        lr=1e-3,
        batch=32,
        schedule="cosine",
        data="full",
        samples=160000,
        rawpen=0,
    )
    v1 = [
        dict(data="5k"),
        dict(),
        dict(param="interval"),
        dict(rawpen=1),
        dict(param="interval", rawpen=1),
        dict(param="sigmoid"),
        dict(kappa=5),
        dict(kappa=20),
        dict(loss="ce_runnerup", kappa=5),
        dict(loss="log1mp"),
        dict(beta=0),
        dict(c=8.4),
        dict(c=6.0),
        dict(beta=0.1, rawpen=1),
        dict(alpha=0),
        dict(alpha=0.01),
        dict(alpha=1, alpha_warmup=0.5),
        dict(lr=3e-4),
        dict(lr=3e-3),
        dict(schedule="constant"),
        dict(batch=64),
        dict(batch=128),
        dict(width=16),
        dict(blocks=1),
    ]
    combo = dict(param="interval", rawpen=1, kappa=5, alpha=0.01, c=8.4)
    v1 += [
        combo,
        dict(combo, lr=3e-4),
        dict(combo, batch=64),
        dict(combo, loss="ce_runnerup"),
        dict(combo, beta=0),
        dict(combo, data="5k"),
        dict(combo, alpha=0.1),
        dict(combo, param="clamp"),
        dict(combo, kappa=20),
    ]
    base2 = dict(base, param="sigmoid")
    s = dict(rawpen=1, rawthr=2)
    i = dict(param="interval", **s)
    c = dict(s, kappa=5, c=8.4, alpha=0.01)
    v2 = [
        dict(seed=1),
        dict(rawpen=1),
        s,
        i,
        dict(param="interval", rawpen=10, rawthr=2),
        dict(param="clamp", **s),
        dict(param="interval", rawpen=1, rawthr=1.5),
    ]
    v2 += [
        dict(s, **v)
        for v in [
            dict(kappa=5),
            dict(kappa=20),
            dict(loss="ce_runnerup", kappa=5),
            dict(loss="log1mp"),
            dict(c=8.4),
            dict(beta=0),
            dict(alpha=0.01),
            dict(alpha=0),
            dict(lr=3e-4),
            dict(batch=64),
            dict(width=16),
            dict(samples=230000),
            dict(data="5k"),
            dict(schedule="constant"),
        ]
    ]
    v2 += [
        dict(i, **v)
        for v in [dict(kappa=5), dict(c=8.4), dict(alpha=0.01), dict(kappa=5, c=8.4, alpha=0.01)]
    ]
    v2 += [
        c,
        dict(c, loss="ce_runnerup"),
        dict(c, lr=3e-4),
        dict(c, seed=1),
        dict(c, samples=230000),
    ]
    v2 += [
        dict(s, batch=128),
        dict(s, blocks=1, samples=230000),
        dict(s, width=16, kappa=5),
        dict(rawpen=1, rawthr=1.5),
        dict(rawpen=0.1, rawthr=2),
        dict(s, lr=3e-3),
        dict(s, alpha=1),
        dict(s, beta=0.1),
        dict(c, batch=64, samples=230000),
        dict(c, width=12),
        dict(c, kappa=10),
        dict(c, beta=0),
        dict(c, data="5k"),
        dict(c, alpha=0.1),
        dict(s, seed=1),
        dict(s, seed=2),
        dict(i, kappa=5, c=8.4, alpha=0.01, seed=1),
        dict(c, loss="log1mp"),
    ]
    for n, (b, vs) in enumerate(((base, v1), (base2, v2)), 1):
        with open(f"{out}/sweep{n}.json", "w") as f:
            json.dump([dict(b, **v, name=json.dumps(v)) for v in vs], f)


if __name__ == "__main__":
    import multiprocessing as mp

    if sys.argv[1] == "prep":
        prep(sys.argv[2])
    elif sys.argv[1] == "configs":
        configs(sys.argv[2])
    else:
        cfgs = json.load(open(sys.argv[2]))
        out = sys.argv[3]
        nproc = int(sys.argv[4]) if len(sys.argv) > 4 else 12
        ctx = mp.get_context("spawn")
        res = []
        with ctx.Pool(nproc) as pool:
            for r in pool.imap_unordered(worker, list(enumerate(cfgs))):
                res.append(r)
                json.dump(res, open(out, "w"), indent=1)
