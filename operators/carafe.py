"""CARAFE: Content-Aware ReAssembly of FEatures (Wang et al., ICCV 2019), in pure PyTorch.

Each output pixel is a softmax-weighted sum of the k_up x k_up neighbourhood around its source
pixel, with the weights predicted from the content. The reassembly loops over the k_up^2 taps and
accumulates into the output in place, so memory stays at one output-sized buffer (no unfold).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from operators.conv import Pointwise, conv_macs
from operators.registry import OperatorError, register_op


def reassemble(x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> Tensor:
    """CARAFE reassembly: ``kernels`` (N, k^2, s, s, H, W) normalised weights; returns (N, C, sH, sW)."""
    n, c, h, w = x.shape
    r = up_kernel // 2
    xp = F.pad(x, (r, r, r, r))
    out = x.new_zeros(n, c, h, scale, w, scale)
    weights = kernels.permute(0, 1, 4, 2, 5, 3)  # (N, k^2, H, s, W, s)
    for t in range(up_kernel**2):
        di, dj = divmod(t, up_kernel)
        tap = xp[:, :, di : di + h, dj : dj + w]
        out.addcmul_(tap[:, :, :, None, :, None], weights[:, t, None])
    return out.reshape(n, c, h * scale, w * scale)


@register_op("carafe", kind="upsample", paper="CARAFE (Wang et al., ICCV 2019)")
class CARAFE(nn.Module):
    """CARAFE upsampler: 1x1 channel compressor (64), 3x3 content encoder, softmax kernels of size 5."""

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None,
                 compressed_channels: int = 64, encoder_kernel: int = 3, up_kernel: int = 5) -> None:
        super().__init__()
        if up_kernel % 2 != 1 or encoder_kernel % 2 != 1:
            raise OperatorError("carafe: up_kernel and encoder_kernel must be odd")
        self.scale, self.up_kernel = scale_factor, up_kernel
        self.compressor = Pointwise(channels, compressed_channels, bias=True)
        self.encoder = nn.Conv2d(compressed_channels, up_kernel**2 * scale_factor**2, encoder_kernel,
                                 padding=encoder_kernel // 2)
        nn.init.xavier_uniform_(self.compressor.weight)
        nn.init.zeros_(self.compressor.bias)
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def kernels(self, x: Tensor) -> Tensor:
        """Normalised reassembly kernels (N, k_up^2, s, s, H, W): the pixel-shuffled encoder output, softmaxed."""
        n, _, h, w = x.shape
        raw = self.encoder(self.compressor(x)).reshape(n, self.up_kernel**2, self.scale, self.scale, h, w)
        return raw.softmax(dim=1)

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return reassemble(x, self.kernels(x), self.up_kernel, self.scale)

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        n, c, h, w = x.shape
        compressed = (n, self.compressor.out_channels, h, w)
        kernel_values = n * self.encoder.out_channels * h * w
        reassembly = self.up_kernel**2 * x.numel() * self.scale**2
        return (conv_macs(self.compressor, x.shape) + conv_macs(self.encoder, compressed)
                + 3 * kernel_values + reassembly)
