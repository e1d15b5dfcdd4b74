"""The default Multi-CryoGAN training step written in PyTorch, for timing against the Rust
trainer (`cargo xtask bench` and docs). Same architecture and shapes as crates/mcg-train:

- G: latent z = (1 - a) z0 + a z1 in R^{1x32^3}, Conv3d 1->16->32->16->1 (3^3, padding 1,
  LeakyReLU), softplus, spherical mask; 8 volumes per batch, 4 poses each.
- Projection (--projector): fourier (default): each volume divided by the sinc^2 gridding
  correction, zero-padded to 2N, fftn, centred and shifted, extended by one periodic plane, and
  sampled trilinearly (grid_sample) at the central slice of each of its 4 poses; or real-space:
  line integral via grid_sample over 2*ceil(sqrt(3)(N/2+1))+1 steps.
- Shift/CTF: rfft2 of the 2N-padded projection times a per-image complex filter, irfft2, crop.
- D: Conv2d 1->32->64->128 (4x4, stride 2, padding 1, LeakyReLU), Linear -> 1, no batch norm.
- WGAN-GP: k = 4 D steps (lambda 10, per-sample gradient norm) per G step, Adam.

Usage: python3 step_benchmark.py [--device cpu|cuda] [--threads T] [--steps S] [--warmup W]
Prints one JSON line: {"seconds_per_step": ..., "device": ..., "threads": ...}.
"""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--device", default="cpu")
p.add_argument("--threads", type=int, default=0)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--box", type=int, default=32)
p.add_argument("--projector", default="fourier", choices=["fourier", "real-space"])
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
dev = torch.device(a.device)
N, B, PPV, K, LAM = a.box, 32, 4, 4, 10.0
torch.manual_seed(0)

class G(nn.Module):
    def __init__(s):
        super().__init__()
        s.ends = nn.Parameter(torch.rand(2, 1, 32, 32, 32) * 0.025, requires_grad=False)
        c = 16
        s.net = nn.Sequential(nn.Conv3d(1, c, 3, padding=1), nn.LeakyReLU(0.01),
                              nn.Conv3d(c, 2 * c, 3, padding=1), nn.LeakyReLU(0.01),
                              nn.Conv3d(2 * c, c, 3, padding=1), nn.LeakyReLU(0.01),
                              nn.Conv3d(c, 1, 3, padding=1))
        r = torch.arange(N) - N // 2
        d2 = r.view(N, 1, 1) ** 2 + r.view(1, N, 1) ** 2 + r.view(1, 1, N) ** 2
        s.register_buffer("mask", (d2 <= (N // 2) ** 2).float())
    def forward(s, alpha):
        k = alpha.shape[0]
        al = alpha.view(k, 1, 1, 1, 1)
        z = s.ends[0:1] * (1 - al) + s.ends[1:2] * al
        out = s.net(z)
        if out.shape[2] != N:
            out = F.interpolate(out, size=(N, N, N), mode="trilinear", align_corners=False)
        return F.softplus(out.squeeze(1)) * s.mask

class D(nn.Module):
    def __init__(s):
        super().__init__()
        c = 32
        s.net = nn.Sequential(nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.01),
                              nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.01),
                              nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.LeakyReLU(0.01),
                              nn.Flatten(), nn.Linear(4 * c * (N // 8) ** 2, 1))
    def forward(s, x):
        return s.net(x.unsqueeze(1)).squeeze(1)

half = math.ceil(math.sqrt(3) * (N // 2 + 1))
steps = 2 * half + 1
t = torch.arange(-half, half + 1, device=dev, dtype=torch.float32)
yx = torch.arange(N, device=dev, dtype=torch.float32) - N // 2
offsets = torch.stack([yx.view(1, 1, N).expand(steps, N, N), yx.view(1, N, 1).expand(steps, N, N),
                       t.view(steps, 1, 1).expand(steps, N, N)], -1).view(-1, 3)

def random_rotations(b):
    q = torch.randn(b, 4, device=dev)
    q = q / q.norm(dim=1, keepdim=True)
    w, x, y, z = q.unbind(1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], 1).view(b, 3, 3)

M, H = 2 * N, N + 1
kx = torch.arange(H, device=dev, dtype=torch.float32)
kyi = torch.arange(M, device=dev, dtype=torch.float32)
ky = torch.remainder(kyi + N, M) - N
kxx, kyy = kx.view(1, H).expand(M, H), ky.view(M, 1).expand(M, H)
freqs = torch.stack([kxx, kyy, torch.zeros_like(kxx)], -1).view(-1, 3)
slice_weight = (kxx ** 2 + kyy ** 2 <= N * N).float() * (1 - 2 * torch.remainder(kx.view(1, H) + kyi.view(M, 1), 2))
w = torch.sinc((torch.arange(N, device=dev, dtype=torch.float32) - N // 2) / M) ** 2
correction = 1 / (w.view(N, 1, 1) * w.view(1, N, 1) * w.view(1, 1, N))
idx = torch.arange(M, device=dev, dtype=torch.float32)
sign3 = 1 - 2 * torch.remainder(idx.view(M, 1, 1) + idx.view(1, M, 1) + idx.view(1, 1, M), 2)

def fourier_slices(vols, rot):
    v = vols.shape[0]
    lo = N // 2
    padded = F.pad(vols * correction, (lo, N - lo, lo, N - lo, lo, N - lo))
    f = torch.fft.fftshift(torch.fft.fftn(padded, dim=(-3, -2, -1)) * sign3, dim=(-3, -2, -1))
    parts = torch.view_as_real(f).permute(0, 4, 1, 2, 3)
    for d in (2, 3, 4):
        parts = torch.cat([parts, parts.narrow(d, 0, 1)], d)
    pts = freqs.unsqueeze(0) @ rot + N
    grid = (pts * (2.0 / M) - 1).view(v, PPV, M, H, 3)
    s = F.grid_sample(parts, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    s = s.permute(0, 2, 3, 4, 1).reshape(B, M, H, 2).contiguous()
    return torch.view_as_complex(s) * slice_weight

def simulate(g, sigma=1.0):
    alphas = torch.rand(B // PPV, device=dev)
    vols = g(alphas)
    rot = random_rotations(B)
    lo = N // 2
    filt = torch.randn(B, 2 * N, N + 1, dtype=torch.complex64, device=dev)
    if a.projector == "fourier":
        spec = fourier_slices(vols, rot)
    else:
        each = vols.repeat_interleave(PPV, 0)
        pts = offsets.unsqueeze(0) @ rot + N // 2
        grid = (pts * (2.0 / (N - 1)) - 1).view(B, steps, N, N, 3)
        proj = F.grid_sample(each.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True).sum((1, 2))
        spec = torch.fft.rfft2(F.pad(proj, (lo, lo, lo, lo)))
    img = torch.fft.irfft2(spec * filt, s=(2 * N, 2 * N))[:, lo:lo + N, lo:lo + N]
    return img + torch.randn_like(img) * sigma

g, d = G().to(dev), D().to(dev)
og = torch.optim.Adam([p for p in g.parameters() if p.requires_grad], lr=1e-3, betas=(0.5, 0.9))
od = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.9))

def step():
    for _ in range(K):
        real = torch.randn(B, N, N, device=dev)
        fake = simulate(g).detach()
        eps = torch.rand(B, 1, 1, device=dev)
        x = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(d(x).sum(), x, create_graph=True)
        gp = ((grad.view(B, -1).norm(dim=1) - 1) ** 2).mean()
        loss = d(fake).mean() - d(real).mean() + LAM * gp
        od.zero_grad(); loss.backward(); od.step()
    fake = simulate(g)
    og.zero_grad(); od.zero_grad()
    (-d(fake).mean()).backward(); og.step()

def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()

for _ in range(a.warmup):
    step()
sync()
t0 = time.perf_counter()
for _ in range(a.steps):
    step()
sync()
sec = (time.perf_counter() - t0) / a.steps
print(json.dumps({"seconds_per_step": sec, "device": a.device, "projector": a.projector, "threads": torch.get_num_threads(),
                  "torch": torch.__version__}))
