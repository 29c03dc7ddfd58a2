"""Image metrics: PSNR and SSIM (super-resolution, autoencoders), the seam and hole errors of a
fill (inpainting), Sobel edge maps and edge F1 (ControlNet). Images are [B, C, H, W] in [-1, 1];
every metric is measured on a 0-1 scale, one value per image unless it says otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanodiffusion.errors import NanodiffError


def psnr(images: torch.Tensor, reference: torch.Tensor, pooled: bool = False) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] measured on a 0-1 scale: one per image
    [B], or with ``pooled`` one number for the set, from the mean squared error over all its pixels
    (what an autoencoder's report quotes; not the mean of the per-image values)."""
    err = ((images.float() - reference.float()) / 2).square().flatten(1).mean(1)
    mse = err.mean() if pooled else err
    return 10 * torch.log10(1 / mse.clamp(min=1e-12))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(images: torch.Tensor, reference: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image [B] (Wang et al. 2004), images in [-1, 1] on a 0-1 scale:
    local means, variances and covariance under a Gaussian window (valid positions only), the
    SSIM map averaged over positions and channels."""
    if images.shape != reference.shape or images.ndim != 4:
        raise NanodiffError(
            f"SSIM compares [B, C, H, W] images of one shape, got {list(images.shape)} "
            f"and {list(reference.shape)}"
        )
    if min(images.shape[-2:]) < window:
        raise NanodiffError(f"SSIM's window is {window} pixels; the images are {list(images.shape[-2:])}")
    x, y = (images.double() + 1) / 2, (reference.double() + 1) / 2
    C = x.shape[1]
    g = gaussian_window(window, sigma)
    k = (g[:, None] * g[None, :]).expand(C, 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, k, groups=C)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


def boundary_band(known: torch.Tensor, width: int = 2) -> torch.Tensor:
    """The generated pixels within `width` pixels (8-neighbour steps) of a known one: where the
    seam between the kept and the generated region shows. known: [B, 1, H, W] of 0/1."""
    near_known = torch.nn.functional.max_pool2d(known.float(), 2 * width + 1, stride=1, padding=width)
    return (near_known > 0) & (known < 0.5)


def fill_errors(filled: torch.Tensor, original: torch.Tensor, known: torch.Tensor) -> tuple[float, float]:
    """(seam, hole): the RMSE of filled against original images ([B, C, H, W] in [-1, 1], measured
    on a 0-1 scale) in the 2-pixel band inside the hole's edge and over the whole hole."""
    err = ((filled - original) / 2).square().mean(1, keepdim=True)
    hole = (known < 0.5).expand_as(err)
    return err[boundary_band(known)].mean().sqrt().item(), err[hole].mean().sqrt().item()


EDGE_THRESHOLD = 0.35  # Sobel magnitude (on a 0-1 scale, kernel sum 4) above which a pixel is an edge


def sobel_edges(images: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Edge maps [B, 1, H, W] of 0/1 from images [B, C, H, W] in [-1, 1]: the Sobel gradient
    magnitude of each channel on a 0-1 scale (replicated borders), the largest over channels,
    above `threshold`."""
    x = (images.float() + 1) / 2
    B, C, H, W = x.shape
    gx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    k = torch.stack([gx, gx.T])[:, None].to(x)  # [2, 1, 3, 3]
    g = F.conv2d(F.pad(x.reshape(B * C, 1, H, W), (1, 1, 1, 1), mode="replicate"), k)
    magnitude = g.square().sum(1).sqrt().reshape(B, C, H, W).amax(1, keepdim=True)
    return (magnitude > threshold).float()


def edge_f1(images_edges: torch.Tensor, control_edges: torch.Tensor, tolerance: int = 1) -> torch.Tensor:
    """F1 [B] of an image's edge pixels against a control's ([B, 1, H, W] of 0/1), each edge pixel
    counted as matched when the other map has an edge within `tolerance` pixels (8-neighbour
    steps): precision over the image's edges, recall over the control's."""

    def near(e):
        return F.max_pool2d(e.float(), 2 * tolerance + 1, stride=1, padding=tolerance) > 0

    a, b = images_edges > 0.5, control_edges > 0.5
    precision = (a & near(b)).flatten(1).sum(1) / a.flatten(1).sum(1).clamp(min=1)
    recall = (b & near(a)).flatten(1).sum(1) / b.flatten(1).sum(1).clamp(min=1)
    return 2 * precision * recall / (precision + recall).clamp(min=1e-12)
