"""Sound as tensors: WAV files, log-mel spectrograms and their inversion by Griffin-Lim.

A clip is a float32 waveform in [-1, 1]. Its spectrogram image is the log-mel power of a
short-time Fourier transform (Hann window of 1,024 samples, hop 250: 64 frames a second at 16 kHz;
64 mel bands, HTK's mel scale, 0 to 8 kHz) in decibels, mapped from [DB_LOW, DB_HIGH] to [-1, 1]:
one second of 16 kHz sound is a 64 x 64 image, low frequencies in row 0.

Back to sound: the mel power is mapped to linear frequencies by non-negative least squares
(multiplicative updates, Lee and Seung 2001), and the phase is found by the fast Griffin-Lim
algorithm (Griffin and Lim 1984, "Signal estimation from modified short-time Fourier transform";
with the momentum of Perraudin, Balazs and Sondergaard 2013).
"""

from __future__ import annotations

import functools
import math
import wave
from pathlib import Path

import numpy as np
import torch

from nanodiffusion.data.files import check_file, one_line, write_atomically
from nanodiffusion.errors import NanodiffError

N_FFT = 1024
HOP = 250
N_MELS = 64
DB_LOW, DB_HIGH = -30.0, 50.0  # the decibel range mapped to [-1, 1]
MAX_SECONDS = 600  # a longer WAV is refused before it is decoded


@functools.lru_cache(maxsize=4)
def mel_filters(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS) -> torch.Tensor:
    """Triangular filters [n_mels, n_fft // 2 + 1], peaks 1, centres evenly spaced on HTK's mel
    scale m = 2595 log10(1 + f / 700) from 0 Hz to the Nyquist frequency."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(0, mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid))
    return torch.tensor(np.maximum(tri, 0), dtype=torch.float32)


def _stft(x: torch.Tensor) -> torch.Tensor:
    window = torch.hann_window(N_FFT, dtype=x.dtype, device=x.device)
    return torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)


def frames(samples: int) -> int:
    """The spectrogram frames of a clip of `samples` samples (the last, half-empty frame dropped)."""
    return samples // HOP


def mel_spectrogram(waves: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Waveforms [..., T] to spectrogram images [..., N_MELS, T // HOP] in [-1, 1]."""
    lead = waves.shape[:-1]
    power = _stft(waves.reshape(-1, waves.shape[-1]).float()).abs() ** 2  # [B, bins, frames + 1]
    mel = mel_filters(sample_rate) @ power[..., : frames(waves.shape[-1])]
    db = 10 * torch.log10(mel.clamp_min(1e-10))
    x = (db - DB_LOW) / (DB_HIGH - DB_LOW) * 2 - 1
    return x.clamp(-1, 1).reshape(*lead, *x.shape[-2:])


def griffin_lim(
    images: torch.Tensor,
    sample_rate: int,
    samples: int | None = None,
    iters: int = 64,
    momentum: float = 0.99,
) -> torch.Tensor:
    """Spectrogram images [..., N_MELS, F] back to waveforms [..., samples] (default F x HOP)."""
    lead, F = images.shape[:-2], images.shape[-1]
    samples = samples or F * HOP
    db = (images.reshape(-1, N_MELS, F).float().clamp(-1, 1) + 1) / 2 * (DB_HIGH - DB_LOW) + DB_LOW
    mel = 10 ** (db / 10)
    fb = mel_filters(sample_rate)
    power = (torch.linalg.pinv(fb) @ mel).clamp_min(1e-10)  # then non-negative least squares
    for _ in range(30):
        power = power * (fb.T @ mel) / (fb.T @ (fb @ power) + 1e-10)
    magnitude = power.sqrt()
    magnitude = torch.cat([magnitude, magnitude[..., -1:]], -1)  # the dropped last frame
    window = torch.hann_window(N_FFT)
    g = torch.Generator().manual_seed(0)
    angles = torch.exp(2j * math.pi * torch.rand(magnitude.shape, generator=g))
    previous = torch.zeros_like(angles)
    length = (magnitude.shape[-1] - 1) * HOP
    for _ in range(iters):
        x = torch.istft(magnitude * angles, N_FFT, HOP, window=window, center=True, length=length)
        rebuilt = _stft(x)
        angles = rebuilt - momentum / (1 + momentum) * previous
        previous = rebuilt
        angles = angles / angles.abs().clamp_min(1e-8)
    x = torch.istft(magnitude * angles, N_FFT, HOP, window=window, center=True, length=length)
    x = torch.nn.functional.pad(x, (0, max(0, samples - length)))[..., :samples]
    return x.clamp(-1, 1).reshape(*lead, samples)


# --- WAV files ------------------------------------------------------------------------------------
def write_wav(path: str | Path, waveform: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """A mono 16-bit PCM WAV file, written whole or not at all."""
    x = np.asarray(torch.as_tensor(waveform).detach().float().reshape(-1).clamp(-1, 1).numpy())
    pcm = np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()  # read_wav divides by 32768

    def write(tmp: Path) -> None:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sample_rate))
            w.writeframes(pcm)

    return write_atomically(path, write)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file as a mono float32 waveform in [-1, 1] (channels averaged) and its sample rate.
    PCM of 8, 16, 24 or 32 bits and 32-bit float are read; anything else, an empty clip or a file
    that is not a WAV is one NanodiffError line naming the file."""
    from scipy.io import wavfile

    path = check_file(path, "WAV file")
    try:
        with open(path, "rb") as f:
            head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            raise NanodiffError(f"{path} is not a WAV file (no RIFF/WAVE header)")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns of chunks it skips (LIST, cue): harmless
            try:  # mapped first, so that a clip's length is checked before it is read into memory
                rate, data = wavfile.read(path, mmap=True)
            except ValueError:  # formats that cannot be mapped (24-bit PCM)
                rate, data = wavfile.read(path, mmap=False)
    except NanodiffError:
        raise
    except Exception as e:  # scipy's reader raises ValueError, struct.error, EOFError, ... on a damaged file
        raise NanodiffError(f"cannot read WAV {path}: {one_line(e)}") from None
    if not rate or rate < 1:
        raise NanodiffError(f"{path} declares a sample rate of {rate} Hz")
    if data.size == 0 or data.shape[0] == 0:
        raise NanodiffError(f"{path} holds no samples (a zero-length clip)")
    if data.shape[0] > MAX_SECONDS * rate:
        raise NanodiffError(f"{path} is {data.shape[0] / rate:.0f} s long: clips are at most {MAX_SECONDS} s")
    data = np.array(data)  # off the map, now that its length is known
    if data.dtype == np.uint8:
        x = (data.astype(np.float32) - 128) / 128
    elif data.dtype.kind == "i":
        x = data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    elif data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise NanodiffError(f"{path} holds samples that are not finite numbers")
        x = np.clip(data, -1, 1).astype(np.float32)
    else:
        raise NanodiffError(f"{path} holds {data.dtype} samples: use PCM or 32-bit float")
    if x.ndim == 2:
        x = x.mean(1)
    return np.clip(x, -1, 1), int(rate)


def resample(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """A waveform at another sample rate (polyphase filtering, scipy.signal.resample_poly)."""
    if rate == new_rate:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(rate, new_rate)
    return resample_poly(x, new_rate // g, rate // g).astype(np.float32)


def fit_length(x: np.ndarray, samples: int) -> np.ndarray:
    """A waveform cut or padded with silence at the end to `samples` samples."""
    out = np.zeros(samples, np.float32)
    out[: min(samples, len(x))] = x[:samples]
    return out
