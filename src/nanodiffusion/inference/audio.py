"""Sound and music from a run: spoken words (waveform or spectrogram runs), chorales (piano-roll
runs), and the editing that comes from the engine: inpainting a gap and continuation.

The engine draws what the run was trained on ([B, 1, T] waveforms, [B, 1, 64, 64] log-mel images
or [B, 4, 64, 64] piano rolls); this module turns it into what a listener gets: waveforms
(spectrograms through Griffin-Lim, data.audio), binary rolls written as MIDI and rendered by the
package's synthesiser (io.midi).

Inpainting and continuation are inpainting over time (core.editing's "replace"): the given
samples are the known region. A waveform run keeps them exactly. A spectrogram run fills the
frames the gap touches and keeps the others; after Griffin-Lim the given samples are put back
exactly, so only the gap is synthesised.
"""

from __future__ import annotations

from pathlib import Path

import torch

from nanodiffusion.core.denoisers import Denoiser
from nanodiffusion.data import audio
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import draw
from nanodiffusion.io.config import Config
from nanodiffusion.nets import sample_shape

SOUND = ("audio", "spectrogram")
WHAT = {
    "image": "images", "video": "videos", "audio": "sound", "spectrogram": "sound", "roll": "music",
    "molecule": "molecules",
}  # fmt: skip


def run_modality(cfg: Config) -> str:
    """What a run draws: image, video, audio (waveforms), spectrogram or roll (runs trained before
    the modality was recorded: image or video, from the sample's shape)."""
    if cfg.data.modality:
        return cfg.data.modality
    return "video" if len(sample_shape(cfg.model)) == 4 else "image"


def draws_sound(cfg: Config) -> bool:
    """Whether a run draws sound or music (waveforms, spectrograms, piano rolls), not pictures."""
    return run_modality(cfg) in (*SOUND, "roll")


def run_makes(cfg: Config) -> str:
    """What a run makes, in a word for messages: images, videos, sound or music."""
    return WHAT.get(run_modality(cfg), run_modality(cfg))


def clip_samples(cfg: Config) -> int:
    """A sound run's clip length in samples."""
    shape = sample_shape(cfg.model)
    return shape[-1] if run_modality(cfg) == "audio" else shape[-1] * audio.HOP


@torch.no_grad()
def draw_sound(
    cfg: Config,
    denoiser: Denoiser,
    n: int,
    *,
    cond: torch.Tensor | None = None,
    guidance: float = 1.0,
    uncond: torch.Tensor | None = None,
    given: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    sampler: str = "dpm++2m",
    steps: int = 20,
    seed: int = 0,
    progress: bool = False,
    **options,
) -> torch.Tensor:
    """n clips [n, T] in [-1, 1] of a sound run, or n piano rolls [n, V, P, S] in [-1, 1] of a
    roll run. ``given`` ([1 or n, T], a sound run's) with ``known`` ([T] bool: True where given)
    is inpainting or continuation: the known samples are kept exactly."""
    modality = run_modality(cfg)
    if not draws_sound(cfg):
        raise NanodiffError(f"this run draws {modality}s, not sound or music")
    if n < 1:
        raise NanodiffError(f"n must be at least 1, got {n}")
    common = {"guidance": guidance, "uncond": uncond, "sampler": sampler, "steps": steps, "seed": seed}
    common |= {"progress": progress, **options}
    if given is None:
        x = draw(cfg, denoiser, n, cond=cond, **common)
        if modality == "roll":
            return x
        return _to_waves(cfg, x)
    if modality == "roll":
        raise NanodiffError("piano-roll runs are drawn whole: nothing can be given")
    T = clip_samples(cfg)
    if known is None or given.ndim != 2 or given.shape[-1] != T or len(given) not in (1, n):
        raise NanodiffError(f"given sound must be [1 or {n}, {T}] with a known mask of {T} samples")
    known = known.bool().reshape(-1)
    if known.shape[0] != T or not known.any() or known.all():
        raise NanodiffError("the known mask must keep some samples and leave some to draw")
    if modality == "audio":
        init, mask = given[:, None].float(), known.float()[None, None]
    else:
        init = audio.mel_spectrogram(given.float(), cfg.data.sample_rate)[:, None]
        mask = known_frames(known)[None, None, None].float().expand(1, 1, init.shape[-2], -1)
    x = draw(cfg, denoiser, n, cond=cond, init_image=init, known=mask, **common)
    waves = _to_waves(cfg, x)
    return torch.where(known, given.float().expand(n, -1), waves)


def known_frames(known: torch.Tensor) -> torch.Tensor:
    """[F] bool: the spectrogram frames whose whole window lies in the known samples [T]."""
    T = known.shape[0]
    out = torch.zeros(audio.frames(T), dtype=torch.bool)
    for f in range(len(out)):
        lo, hi = max(0, f * audio.HOP - audio.N_FFT // 2), min(T, f * audio.HOP + audio.N_FFT // 2)
        out[f] = bool(known[lo:hi].all())
    return out


def _to_waves(cfg: Config, x: torch.Tensor) -> torch.Tensor:
    if run_modality(cfg) == "audio":
        return x.reshape(len(x), -1)
    return audio.griffin_lim(x[:, 0], cfg.data.sample_rate)


def sound_files(
    cfg: Config, sound: torch.Tensor, folder: str | Path, stem: str = "clip", picture: bool = True
) -> dict[str, Path]:
    """Write a sound run's clips [N, T] (stem_0000.wav, ...) and their spectrograms (spectrograms.png);
    a roll run's rolls [N, V, P, S] as MIDI files (stem_0000.mid), the synthesiser's WAVs and the
    rolls' picture (rolls.png)."""
    from nanodiffusion.io.viz import save_rolls, save_spectrograms

    folder = Path(folder)
    files: dict[str, Path] = {}
    if run_modality(cfg) == "roll":
        from nanodiffusion.data.chorales import binarize
        from nanodiffusion.io.midi import render_wav, write_midi

        rolls = binarize(sound)
        for i, roll in enumerate(rolls):
            write_midi(roll, folder / f"{stem}_{i:04d}.mid")
            audio.write_wav(folder / f"{stem}_{i:04d}.wav", render_wav(roll, 16000), 16000)
        if picture:
            files["picture"] = save_rolls(
                torch.as_tensor(rolls).float() * 2 - 1, folder / "rolls.png", nrow=4
            )
        files["first"] = folder / f"{stem}_0000.mid"
        return files
    rate = cfg.data.sample_rate
    for i, clip in enumerate(sound):
        audio.write_wav(folder / f"{stem}_{i:04d}.wav", clip, rate)
    if picture:
        spectrograms = audio.mel_spectrogram(sound, rate)[:, None]
        files["picture"] = save_spectrograms(spectrograms, folder / "spectrograms.png")
    files["first"] = folder / f"{stem}_0000.wav"
    return files
