"""Generator networks and the registry that rebuilds them from a `ModelConfig`.

Any `torch.nn.Module` mapping latents (B, latent_dim) to samples (B, C, H, W) or (B, D) works with
`imle.IMLE`; these are the ones the CLI can build by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from imle.errors import ConfigError
from imle.registry import factory_registrar

GENERATORS: dict[str, Callable[..., nn.Module]] = {}


#: Decorator adding a generator factory ``f(latent_dim, sample_shape, width) -> Module``.
register_generator = factory_registrar(
    GENERATORS, "generator factory ``f(latent_dim, sample_shape, width) -> Module``")


def build_generator(type: str, latent_dim: int, sample_shape: tuple[int, ...],
                    width: int | None = None) -> nn.Module:
    """Builds a registered generator.

    Args:
        type: registry name, e.g. "mlp", "dcgan28", "dcgan32", "resconv28".
        latent_dim: dimension of the latent codes.
        sample_shape: shape of one sample, (C, H, W) or (D,).
        width: base width; None picks the generator's own default.

    Returns:
        Module mapping (B, latent_dim) to (B, *sample_shape) with values in [0, 1] for images.
    """
    if type not in GENERATORS:
        raise ConfigError(f"unknown generator {type!r}; choose one of {sorted(GENERATORS)}")
    return GENERATORS[type](latent_dim=latent_dim, sample_shape=tuple(sample_shape), width=width)


def _need_image(name: str, sample_shape: tuple[int, ...], size: int) -> int:
    if len(sample_shape) != 3 or sample_shape[1:] != (size, size):
        raise ConfigError(
            f"generator {name!r} makes {size}x{size} images but the data has samples of shape "
            f"{sample_shape}; pick a generator for that shape (e.g. 'mlp' works for any shape)"
        )
    return sample_shape[0]


class MLPGenerator(nn.Module):
    """Fully connected generator in the style of the paper's MNIST model.

    latent (B, latent_dim) -> hidden ReLU layers -> (B, *sample_shape); a sigmoid output for
    image data in [0, 1], identity otherwise.
    """

    def __init__(self, latent_dim: int, sample_shape: tuple[int, ...], hidden: int = 1024,
                 layers: int = 2, output: str = "sigmoid") -> None:
        super().__init__()
        self.sample_shape = sample_shape
        dims = [latent_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        blocks.append(nn.Linear(dims[-1], math.prod(sample_shape)))
        self.net = nn.Sequential(*blocks)
        self.output = output

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.net(z)
        if self.output == "sigmoid":
            out = torch.sigmoid(out)
        return out.view(z.shape[0], *self.sample_shape)


@register_generator("mlp")
def _mlp(latent_dim: int, sample_shape: tuple[int, ...], width: int | None) -> nn.Module:
    # Images are in [0, 1]; other arrays (e.g. 2-D mixtures) are unbounded.
    output = "sigmoid" if len(sample_shape) == 3 else "identity"
    return MLPGenerator(latent_dim, sample_shape, hidden=width or 1024, output=output)


def _subpixel_taps() -> torch.Tensor:
    """Index map from a 3x3 sub-pixel kernel to the taps of a 4x4, stride-2 transposed kernel.

    A ConvTranspose2d(k=4, s=2, p=1) writes output pixel (2i + a, 2j + b) from input pixels
    (i + dy, j + dx), dy, dx in {-1, 0, 1}, through kernel tap (a + 1 - 2 dy, b + 1 - 2 dx). So it
    equals a 3x3 convolution (padding 1) with 4 * C_out outputs, one per phase (a, b), followed by
    pixel_shuffle(2). Entry [a, b, ty, tx] is the flat 4x4 tap index, or 16 for "no tap" (zero).
    """
    taps = torch.full((2, 2, 3, 3), 16, dtype=torch.long)
    for a in range(2):
        for b in range(2):
            for ty in range(3):
                for tx in range(3):
                    ky, kx = a + 1 - 2 * (ty - 1), b + 1 - 2 * (tx - 1)
                    if 0 <= ky < 4 and 0 <= kx < 4:
                        taps[a, b, ty, tx] = ky * 4 + kx
    return taps


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    """ConvTranspose2d(k=4, s=2, p=1) computed as a 3x3 convolution plus pixel_shuffle(2).

    Same parameters, state-dict keys and outputs (up to float rounding) as the transposed
    convolution, but oneDNN's transposed-convolution kernels are slow for few output channels:
    for the 32 -> 1 output layer of ``dcgan28`` the sub-pixel form drew a 20,000-sample bf16 pool
    1.5x faster on the 2-core CPU (``benchmarks/step_cost_bench.py``).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 4, 2, 1, bias=bias)
        self.register_buffer("taps", _subpixel_taps().flatten(), persistent=False)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        w = self.weight  # (C_in, C_out, 4, 4)
        c_in, c_out = w.shape[:2]
        padded = torch.cat([w.flatten(2), w.new_zeros(c_in, c_out, 1)], 2)
        kernel = padded[:, :, self.taps].view(c_in, c_out, 2, 2, 3, 3)
        kernel = kernel.permute(1, 2, 3, 0, 4, 5).reshape(4 * c_out, c_in, 3, 3)
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        return F.pixel_shuffle(F.conv2d(x, kernel, bias, padding=1), 2)


class DCGANGenerator(nn.Module):
    """DCGAN-style generator: linear to a 7x7 (28x28 output) or 4x4 (32x32) map, then stride-2
    transposed convolutions halving the channels, the last one producing the image.

    28x28: z -> (2w, 7, 7) -> (w, 14, 14) -> (C, 28, 28); 32x32: z -> (4w, 4, 4) -> (2w, 8, 8)
    -> (w, 16, 16) -> (C, 32, 32). Batch norm is left out on purpose: IMLE runs the generator on
    a large pool and then trains on small batches of matched latents, and batch statistics would
    differ between the two. The output layer is a `SubpixelConvTranspose2d` (the same function
    as ``nn.ConvTranspose2d(.., 4, 2, 1)``, faster for few output channels).
    """

    def __init__(self, latent_dim: int, channels: int, size: int, width: int = 64) -> None:
        super().__init__()
        self.start, ups = {28: (7, 2), 32: (4, 3)}[size]
        ch = [width * 2 ** (ups - 1 - i) for i in range(ups)] + [channels]
        self.fc = nn.Sequential(nn.Linear(latent_dim, ch[0] * self.start**2), nn.ReLU(True))
        layers: list[nn.Module] = []
        for i in range(ups):
            # The output layer has few channels, where the sub-pixel form is much faster.
            last = i == ups - 1
            layers.append(SubpixelConvTranspose2d(ch[i], ch[i + 1]) if last
                          else nn.ConvTranspose2d(ch[i], ch[i + 1], 4, 2, 1))
            layers.append(nn.ReLU(True) if i < ups - 1 else nn.Sigmoid())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], -1, self.start, self.start)
        # Channels-last maps take oneDNN's faster bf16 convolution kernels on CPU.
        return self.net(h.contiguous(memory_format=torch.channels_last))


@register_generator("dcgan28")
def _dcgan28(latent_dim: int, sample_shape: tuple[int, ...], width: int | None) -> nn.Module:
    return DCGANGenerator(latent_dim, _need_image("dcgan28", sample_shape, 28), 28, width or 32)


@register_generator("dcgan32")
def _dcgan32(latent_dim: int, sample_shape: tuple[int, ...], width: int | None) -> nn.Module:
    return DCGANGenerator(latent_dim, _need_image("dcgan32", sample_shape, 32), 32, width or 64)


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, padding=1),
            nn.LeakyReLU(0.2), nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResConvGenerator(nn.Module):
    """Small residual upsampling generator for 28x28 images (the project's MNIST default).

    latent (B, latent_dim) -> linear to (2w, 7, 7) -> residual block -> nearest upsample + conv
    to (w, 14, 14) -> residual block -> upsample + conv to (w/2, 28, 28) -> conv -> sigmoid.
    Nearest upsampling avoids the checkerboard artefacts of transposed convolutions.
    """

    def __init__(self, latent_dim: int, channels: int, width: int = 64) -> None:
        super().__init__()
        w = width
        self.fc = nn.Linear(latent_dim, 2 * w * 49)
        self.net = nn.Sequential(
            _ResBlock(2 * w),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * w, w, 3, padding=1),
            _ResBlock(w),
            nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2), nn.Conv2d(w, w // 2, 3, padding=1),
            nn.LeakyReLU(0.2), nn.Conv2d(w // 2, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(z.shape[0], -1, 7, 7))


class ReferenceConvGenerator(nn.Module):
    """The IMLE reference code's MNIST generator (Li & Malik 2018, ``imle.py``).

    z (B, latent_dim) as (B, latent_dim, 1, 1) -> ConvTranspose 1x1 to 1024 ch -> 7x7 to 128 ch
    -> 4x4 stride 2 to 64 ch (14x14) -> 4x4 stride 2 to 1 ch (28x28); no biases, BatchNorm after
    every transposed convolution, ReLU between them and a sigmoid at the end. BatchNorm makes a
    sample depend on its batch in training mode (the reference code draws its pools so). The
    last layer is computed in the sub-pixel form (`SubpixelConvTranspose2d`, same parameters).
    """

    def __init__(self, latent_dim: int, channels: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 1024, 1, 1, bias=False), nn.BatchNorm2d(1024),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(1024, 128, 7, 1, bias=False), nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            SubpixelConvTranspose2d(64, channels, bias=False), nn.BatchNorm2d(channels),
            nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


@register_generator("reference-conv28")
def _reference_conv28(latent_dim: int, sample_shape: tuple[int, ...],
                      width: int | None) -> nn.Module:
    if width is not None:
        raise ConfigError("model.width is fixed for 'reference-conv28' (the reference code's "
                          "1024/128/64 channels); leave it null")
    return ReferenceConvGenerator(latent_dim, _need_image("reference-conv28", sample_shape, 28))


@register_generator("resconv28")
def _resconv28(latent_dim: int, sample_shape: tuple[int, ...], width: int | None) -> nn.Module:
    return ResConvGenerator(latent_dim, _need_image("resconv28", sample_shape, 28), width or 64)


# ------------------------------------------------------------------- conditional generators
#: Conditional generator factories ``f(latent_dim, sample_shape, cond_shape, width)``; each
#: module maps (z (B, latent_dim), c (B, *cond_shape)) to (B, *sample_shape).
CONDITIONAL_GENERATORS: dict[str, Callable[..., nn.Module]] = {}


#: Decorator adding a conditional generator factory under ``name``.
register_conditional_generator = factory_registrar(CONDITIONAL_GENERATORS,
                                                   "conditional generator factory")


def auto_generator(sample_shape: tuple[int, ...],
                   cond_shape: tuple[int, ...] | None = None) -> tuple[str, str]:
    """The generator ``model.type = "auto"`` picks for the data, and why.

    Args:
        sample_shape: one example's shape, (C, H, W) or (D,).
        cond_shape: one condition's shape for a conditional task, else None.

    Returns:
        (registered name, a short reason). 28x28 and 32x32 images get the matching conv
        generator, other shapes the MLP; image conditions (super-resolution, completion) get
        "img2img", vector conditions (classes, observations) the concatenating version.
    """
    image = len(sample_shape) == 3
    side = sample_shape[1] if image and sample_shape[1] == sample_shape[2] else None
    base = {28: "dcgan28", 32: "dcgan32"}.get(side, "mlp")
    what = ("x".join(str(d) for d in sample_shape) + " images" if image else
            f"{math.prod(sample_shape)}-dimensional vectors")
    if cond_shape is None:
        return base, what
    if image and len(cond_shape) == 3 and sample_shape[1] % 4 == 0 and sample_shape[2] % 4 == 0:
        return "img2img", f"{what} from image conditions"
    return f"cond-{base}", f"{what} from vector conditions"


def build_conditional_generator(type: str, latent_dim: int, sample_shape: tuple[int, ...],
                                cond_shape: tuple[int, ...],
                                width: int | None = None) -> nn.Module:
    """Builds a registered conditional generator T(z, c)."""
    if type not in CONDITIONAL_GENERATORS:
        raise ConfigError(f"unknown conditional generator {type!r}; choose one of "
                          f"{sorted(CONDITIONAL_GENERATORS)}")
    return CONDITIONAL_GENERATORS[type](latent_dim=latent_dim, sample_shape=tuple(sample_shape),
                                        cond_shape=tuple(cond_shape), width=width)


class ConcatConditioned(nn.Module):
    """T(z, c) = G([z, flatten(c)]) for any unconditional generator G built for
    latent_dim + prod(cond_shape) inputs: the usual conditioning for vector conditions (one-hot
    labels, observations)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.cat([z, c.flatten(1).to(z.dtype)], dim=1))


def _concat(name: str) -> Callable[..., nn.Module]:
    def factory(latent_dim: int, sample_shape: tuple[int, ...], cond_shape: tuple[int, ...],
                width: int | None) -> nn.Module:
        inner = GENERATORS[name](latent_dim=latent_dim + math.prod(cond_shape),
                                 sample_shape=sample_shape, width=width)
        return ConcatConditioned(inner)
    return factory


for _name in ("mlp", "dcgan28", "dcgan32"):
    register_conditional_generator(f"cond-{_name}")(_concat(_name))


class ImageToImage(nn.Module):
    """Image-to-image generator for super-resolution and completion: T(z, c) for an image
    condition c (B, Cc, h, w) (resized to the output size) and a latent vector z.

    Encoder: conv (w) -> stride-2 conv (2w, H/2) -> stride-2 conv (4w, H/4). The latent enters
    at the bottleneck as 16 noise channels (a linear map of z) and by FiLM (per-channel scale
    and shift from z), so every resolution of the decoder sees it. Decoder: nearest upsample +
    conv with skip connections back to (C, H, W), plus a 1x1 convolution of the resized
    condition added to the output logits, sigmoid output. H and W must be multiples of 4.
    """

    def __init__(self, latent_dim: int, sample_shape: tuple[int, ...],
                 cond_shape: tuple[int, ...], width: int = 32) -> None:
        super().__init__()
        if len(sample_shape) != 3 or len(cond_shape) != 3 or sample_shape[1] % 4 or \
                sample_shape[2] % 4:
            raise ConfigError(f"'img2img' maps image conditions (C, h, w) to images (C, H, W) "
                              f"with H, W multiples of 4; got condition {cond_shape} and "
                              f"samples {sample_shape}")
        c_out, h, w_ = sample_shape
        w = width
        self.size = (h, w_)
        self.bottleneck = (h // 4, w_ // 4)
        act = nn.LeakyReLU(0.2)
        self.enc1 = nn.Sequential(nn.Conv2d(cond_shape[0], w, 3, padding=1), act)
        self.enc2 = nn.Sequential(nn.Conv2d(w, 2 * w, 4, 2, 1), act)
        self.enc3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 4, 2, 1), act)
        self.z_map = nn.Linear(latent_dim, 16 * h // 4 * w_ // 4)
        self.z_film = nn.Linear(latent_dim, 2 * 4 * w)
        self.mid = nn.Sequential(nn.Conv2d(4 * w + 16, 4 * w, 3, padding=1), act)
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2),
                                 nn.Conv2d(4 * w, 2 * w, 3, padding=1), act)
        self.dec2 = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), act)
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2),
                                 nn.Conv2d(2 * w, w, 3, padding=1), act)
        self.dec1 = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), act,
                                  nn.Conv2d(w, c_out, 3, padding=1))
        # A 1x1 path from the resized condition to the output logits: the deep path starts
        # with tiny activations, and without this the sigmoid learns a constant and saturates.
        self.skip = nn.Conv2d(cond_shape[0], c_out, 1)
        if cond_shape[0] == c_out:  # start as logit 4c - 2, the resized condition itself
            nn.init.constant_(self.skip.bias, -2.0)
            with torch.no_grad():
                self.skip.weight.copy_(4.0 * torch.eye(c_out)[:, :, None, None])

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c = c.to(z.dtype) if c.is_floating_point() else c.float()
        if tuple(c.shape[2:]) != self.size:
            c = F.interpolate(c, size=self.size, mode="nearest")
        e1 = self.enc1(c)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        scale, shift = self.z_film(z).chunk(2, dim=1)
        e3 = e3 * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        zmap = self.z_map(z).view(z.shape[0], 16, *self.bottleneck)
        h = self.mid(torch.cat([e3, zmap], 1))
        h = self.dec2(torch.cat([self.up2(h), e2], 1))
        return torch.sigmoid(self.dec1(torch.cat([self.up1(h), e1], 1)) + self.skip(c))


@register_conditional_generator("img2img")
def _img2img(latent_dim: int, sample_shape: tuple[int, ...], cond_shape: tuple[int, ...],
             width: int | None) -> nn.Module:
    return ImageToImage(latent_dim, sample_shape, cond_shape, width or 32)


# ------------------------------------------------------------------- velocity networks (flow)
#: Velocity network factories ``f(sample_shape, cond_shape, width)`` for flow matching; each
#: module maps (x (B, *sample_shape), t (B,) in [0, 1]) -- plus c (B, *cond_shape) for a
#: conditional run -- to a velocity (B, *sample_shape).
VELOCITY_NETS: dict[str, Callable[..., nn.Module]] = {}


#: Decorator adding a velocity network factory under ``name``.
register_velocity_net = factory_registrar(VELOCITY_NETS, "velocity network factory")


def auto_velocity_net(sample_shape: tuple[int, ...]) -> tuple[str, str]:
    """The velocity network ``model.type = "auto"`` picks for a flow, and why: "flow-unet" for
    images whose sides are multiples of 4, "flow-mlp" otherwise."""
    if len(sample_shape) == 3 and sample_shape[1] % 4 == 0 and sample_shape[2] % 4 == 0:
        return "flow-unet", "x".join(str(d) for d in sample_shape) + " images"
    return "flow-mlp", f"{math.prod(sample_shape)}-number samples"


def build_velocity_net(type: str, sample_shape: tuple[int, ...],
                       cond_shape: tuple[int, ...] | None = None,
                       width: int | None = None) -> nn.Module:
    """Builds a registered velocity network v(x, t[, c])."""
    if type not in VELOCITY_NETS:
        raise ConfigError(f"model.type={type!r} is not a velocity network; flow matching trains "
                          f"one of {sorted(VELOCITY_NETS)} (or 'auto')")
    return VELOCITY_NETS[type](sample_shape=tuple(sample_shape),
                               cond_shape=None if cond_shape is None else tuple(cond_shape),
                               width=width)


def time_features(t: torch.Tensor, dim: int = 64) -> torch.Tensor:
    """Sinusoidal features (B, dim) of times t (B,) in [0, 1]: DDPM's embedding of 1000 t,
    angular frequencies from 1 to 1/1000, so both coarse and fine changes in t are seen."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32)
                      * (-math.log(1000.0) / max(half - 1, 1)))
    ang = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([ang.sin(), ang.cos()], 1)


class VelocityMLP(nn.Module):
    """v(x, t[, c]) for vectors (and any shape, flattened): an MLP on [x, c, features(t)] with
    SiLU hidden layers of ``width`` units, plus a per-number gain on x set by t,
    v = MLP(x, c, t) + g(t) * x. Both start at zero (v = 0).

    The gain matters when the sample has more numbers than the hidden layers: a velocity
    carries a full-rank term in x (near t = 0 it is about E[x1] - x), which a hidden layer of
    ``width`` < dim units cannot pass through; g(t) * x carries it at any width.
    """

    def __init__(self, sample_shape: tuple[int, ...], cond_shape: tuple[int, ...] | None = None,
                 width: int = 512, layers: int = 3) -> None:
        super().__init__()
        self.sample_shape = tuple(sample_shape)
        dim = math.prod(sample_shape)
        dims = [dim + (math.prod(cond_shape) if cond_shape else 0) + 64] + [width] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            mods += [nn.Linear(a, b), nn.SiLU()]
        out = nn.Linear(width, dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*mods, out)
        self.gain = nn.Linear(64, dim)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.gain.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                c: torch.Tensor | None = None) -> torch.Tensor:
        flat, tf = x.flatten(1), time_features(t).to(x.dtype)
        parts = [flat, tf]
        if c is not None:
            parts.insert(1, c.flatten(1).to(x.dtype))
        v = self.net(torch.cat(parts, 1)) + self.gain(tf) * flat
        return v.view(x.shape[0], *self.sample_shape)


def _groups(ch: int) -> int:
    return math.gcd(8, ch)


class _TimeResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a per-channel scale and shift from the time embedding
    between them (FiLM), and a 1x1 skip when the channel count changes."""

    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb).chunk(2, 1)
        h = self.norm2(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(h))


class VelocityUNet(nn.Module):
    """v(x, t[, c]) for images (C, H, W) with H, W multiples of 4: a small U-Net.

    (C, H, W) -> conv to w -> block (w, H) -> stride-2 conv -> block (2w, H/2) -> stride-2
    conv -> block (4w, H/4) -> block -> nearest upsample + conv, concat skip -> block (2w,
    H/2) -> upsample + conv, concat skip -> block (w, H) -> conv to C (starts at zero). Each
    block takes the time embedding (sinusoidal features -> MLP of 4w) by FiLM. A vector
    condition (classes) is added to the time embedding through a linear map; an image
    condition (super-resolution, completion) is resized to (H, W) and concatenated to x.
    """

    def __init__(self, sample_shape: tuple[int, ...], cond_shape: tuple[int, ...] | None = None,
                 width: int = 32) -> None:
        super().__init__()
        if len(sample_shape) != 3 or sample_shape[1] % 4 or sample_shape[2] % 4:
            raise ConfigError(f"'flow-unet' makes images (C, H, W) with H, W multiples of 4; "
                              f"these samples have shape {tuple(sample_shape)}: use 'flow-mlp'")
        c, h, w_ = sample_shape
        w, e = width, 4 * width
        self.size = (h, w_)
        self.image_cond = cond_shape is not None and len(cond_shape) == 3
        c_in = c + (cond_shape[0] if self.image_cond else 0)
        self.time = nn.Sequential(nn.Linear(64, e), nn.SiLU(), nn.Linear(e, e))
        self.cond = (nn.Linear(math.prod(cond_shape), e)
                     if cond_shape is not None and not self.image_cond else None)
        self.inp = nn.Conv2d(c_in, w, 3, padding=1)
        self.enc1 = _TimeResBlock(w, w, e)
        self.down1 = nn.Conv2d(w, 2 * w, 4, 2, 1)
        self.enc2 = _TimeResBlock(2 * w, 2 * w, e)
        self.down2 = nn.Conv2d(2 * w, 4 * w, 4, 2, 1)
        self.mid1 = _TimeResBlock(4 * w, 4 * w, e)
        self.mid2 = _TimeResBlock(4 * w, 4 * w, e)
        self.up2 = nn.Conv2d(4 * w, 2 * w, 3, padding=1)
        self.dec2 = _TimeResBlock(4 * w, 2 * w, e)
        self.up1 = nn.Conv2d(2 * w, w, 3, padding=1)
        self.dec1 = _TimeResBlock(2 * w, w, e)
        self.out_norm = nn.GroupNorm(_groups(w), w)
        self.out = nn.Conv2d(w, c, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                c: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time(time_features(t).to(x.dtype))
        if c is not None and self.image_cond:
            c = c.to(x.dtype) if c.is_floating_point() else c.float()
            if tuple(c.shape[2:]) != self.size:
                c = F.interpolate(c, size=self.size, mode="nearest")
            x = torch.cat([x, c.to(x.dtype)], 1)
        elif c is not None and self.cond is not None:
            emb = emb + self.cond(c.flatten(1).to(emb.dtype))
        emb = F.silu(emb)
        h1 = self.enc1(self.inp(x), emb)
        h2 = self.enc2(self.down1(h1), emb)
        h = self.mid2(self.mid1(self.down2(h2), emb), emb)
        h = self.dec2(torch.cat([self.up2(F.interpolate(h, scale_factor=2.0)), h2], 1), emb)
        h = self.dec1(torch.cat([self.up1(F.interpolate(h, scale_factor=2.0)), h1], 1), emb)
        return self.out(F.silu(self.out_norm(h)))


@register_velocity_net("flow-mlp")
def _flow_mlp(sample_shape: tuple[int, ...], cond_shape: tuple[int, ...] | None,
              width: int | None) -> nn.Module:
    return VelocityMLP(sample_shape, cond_shape, width or 512)


@register_velocity_net("flow-unet")
def _flow_unet(sample_shape: tuple[int, ...], cond_shape: tuple[int, ...] | None,
               width: int | None) -> nn.Module:
    return VelocityUNet(sample_shape, cond_shape, width or 32)
