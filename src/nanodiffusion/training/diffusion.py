"""The diffusion trainer: its step function, the run folder, `train` and `resume`.

The loop itself (AdamW, warm-up and decay, clipping, accumulation, EMA, checkpoints, Ctrl-C,
torchrun) is training.loop's. One code path for one process and for `torchrun` on many: the
data order and the noise are drawn from seeded generators for the whole global batch on every
rank, and each rank takes its slice. So the global batch, the data order and the result do not
depend on the number of processes, and a resumed run continues bit for bit (all of it follows
from the step number plus the saved optimizer, EMA and RNG states).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from nanodiffusion.core.losses import diffusion_loss, sample_sigmas
from nanodiffusion.data.datasets import ImageData, as_frames, held_out_images, load_data
from nanodiffusion.errors import NanodiffError
from nanodiffusion.inference.pipelines import build_denoiser, draw
from nanodiffusion.io.checkpoint import latest_checkpoint, load_config, save_config
from nanodiffusion.io.config import Config, validate
from nanodiffusion.nets.autoencoder import AE_CONFIG, AutoencoderConfig
from nanodiffusion.tasks import get_task
from nanodiffusion.training.autoencoder import AE_CHECKPOINT, train_autoencoder_folder
from nanodiffusion.training.distributed import Dist, setup_distributed
from nanodiffusion.training.loop import EMAModel, Loop, lr_multiplier

__all__ = [
    "EMAModel",
    "Dist",
    "Trainer",
    "batch_indices",
    "grid_prompts",
    "lr_factor",
    "prepare_config",
    "resume",
    "setup_distributed",
    "train",
]


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio at cfg.run.steps (or constant)."""
    return lr_multiplier(step, cfg.optim, cfg.run.steps)


def prepare_config(cfg: Config, data: ImageData, text_dim: int = 0) -> Config:
    """Fill in what the data decides: channels, size (a video's [F, H, W]), number of classes,
    the text width."""
    if data.modality == "molecule":
        _prepare_molecules(cfg, data)
    else:
        _prepare_grid(cfg, data)
    cfg.model.num_classes = 0
    if cfg.data.class_conditional:
        if data.labels is None:
            raise NanodiffError(f"class_conditional needs labels, and {data.name} has none")
        cfg.model.num_classes = data.num_classes
        cfg.data.class_names = "|".join(data.class_names or [])
    cfg.model.context_dim = text_dim
    get_task(cfg.data.task).prepare(cfg, data)  # its checks, its image condition's channels, crops
    if cfg.optim.batch_size < 1 or cfg.run.steps < 1 or cfg.optim.grad_accum < 1:
        raise NanodiffError("batch_size, steps and grad_accum must be positive")
    return cfg


def _prepare_molecules(cfg: Config, data: ImageData) -> None:
    """Molecules [M, N, 3 + K]: an EGNN of N atoms and K types, the atom types and the histograms
    of atoms per molecule (overall and per property bin) that sampling draws sizes from."""
    if cfg.model.kind != "egnn":
        raise NanodiffError(
            f"{data.name} is molecules (atoms with 3-D coordinates): train an EGNN (model.kind=egnn, as "
            f"the qm9-like preset); a {cfg.model.kind} takes images"
        )
    if cfg.data.task not in ("", "molecules"):
        raise NanodiffError(f"data.task = {cfg.data.task!r} takes images; molecules train with 'molecules'")
    if cfg.data.text_encoder:
        raise NanodiffError("molecules have no captions: data.text_encoder must be empty")
    cfg.data.task = "molecules"
    n, c = data.images.shape[1:]
    cfg.model.in_channels = cfg.model.out_channels = c
    cfg.model.max_atoms = n
    cfg.data.modality, cfg.data.sample_rate = "molecule", 0
    cfg.data.atom_types = "|".join(data.molecules.elements)
    counts = torch.as_tensor(data.molecules.counts, dtype=torch.long)
    cfg.data.atom_counts = torch.bincount(counts, minlength=n + 1).tolist()
    cfg.data.class_atom_counts = []
    if cfg.data.class_conditional and data.labels is not None:
        per = [torch.bincount(counts[data.labels == k], minlength=n + 1) for k in range(data.num_classes)]
        cfg.data.class_atom_counts = torch.cat(per).tolist()


def _prepare_grid(cfg: Config, data: ImageData) -> None:
    """Images, videos and sound: channels and the size of each axis."""
    c, *sizes = data.images.shape[1:]
    if len(sizes) == 2 and sizes[-1] != sizes[-2]:
        raise NanodiffError(f"images must be square, got {sizes[-2]}x{sizes[-1]}")
    if len(sizes) != 2 and cfg.model.kind != "dit":
        video = len(sizes) == 3
        what, net, like = (
            ("video [F, H, W]", "space-time DiT", "video-shapes")
            if video
            else ("sound [T]", "DiT", "speech-wave")
        )
        raise NanodiffError(
            f"{data.name} is {what} = {sizes}: train a {net} (model.kind=dit, as the {like} preset); "
            f"a {cfg.model.kind} takes images"
        )
    cfg.model.in_channels = cfg.model.out_channels = c
    cfg.model.image_size = list(sizes) if len(sizes) != 2 else sizes[0]
    cfg.data.modality = "video" if data.modality == "image" and len(sizes) == 3 else data.modality
    cfg.data.sample_rate = data.sample_rate


def per_frame(data: ImageData) -> ImageData:
    """A video dataset's frames as an image dataset, each frame with its video's label and caption."""
    if data.images.ndim != 5:
        raise NanodiffError(f"data.per_frame takes a video dataset, and {data.name} holds images")
    F = data.images.shape[2]
    labels = None if data.labels is None else data.labels.repeat_interleave(F)
    captions = None if data.captions is None else [c for c in data.captions for _ in range(F)]
    return ImageData(as_frames(data.images), labels, data.num_classes, data.name, data.class_names, captions)


def grid_prompts(cfg: Config, captions: list[str]) -> list[str]:
    """The prompts of a text run's sample grids: run.sample_prompts ("|"-separated), else the
    shapes world's fixed lists (shapes.GRID_PROMPTS, moving_shapes.GRID_PROMPTS), else the data's
    first captions."""
    if cfg.run.sample_prompts.strip():
        return [p.strip() for p in cfg.run.sample_prompts.split("|")]
    if cfg.data.name == "shapes":
        from nanodiffusion.data.shapes import GRID_PROMPTS

        return list(GRID_PROMPTS)
    if cfg.data.name == "video-shapes":
        from nanodiffusion.data.moving_shapes import GRID_PROMPTS

        return list(GRID_PROMPTS)
    return captions[: cfg.run.sample_n]


def batch_indices(
    step: int, micro: int, n_micro: int, micro_batch: int, n_data: int, seed: int
) -> torch.Tensor:
    """Indices of one global micro-batch in a stream of seeded per-epoch permutations."""
    k = (step * n_micro + micro) * micro_batch  # position in the stream
    chunks, taken = [], 0
    while taken < micro_batch:
        epoch, pos = divmod(k + taken, n_data)
        perm = torch.randperm(n_data, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        chunks.append(perm[pos : pos + micro_batch - taken])
        taken += len(chunks[-1])
    return torch.cat(chunks)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True):
        self.run_dir = Path(run_dir)
        validate(cfg, prepared=resume, training=True)  # before the data loads at data.image_size
        self.dist, self.device = setup_distributed(cfg.run.device)
        self.progress = progress and self.dist.main
        d = cfg.data
        self.data = load_data(
            d.name,
            "train",
            d.image_size,
            d.channels,
            frames=d.frames,
            spectrogram=d.spectrogram,
            hydrogens=d.hydrogens,
            limit=d.limit or None,
            property=d.property if d.class_conditional else "",
            property_bins=d.property_bins,
        )
        if d.per_frame:  # the frame-by-frame baseline: every frame an image, with its video's caption
            self.data = per_frame(self.data)
        self.prompts = None  # text: every distinct caption encoded once (row 0 is "")
        if cfg.data.text_encoder:
            from nanodiffusion.data.text import encode_unique, load_text_encoder

            if cfg.data.class_conditional:
                raise NanodiffError(
                    "train on labels (class_conditional) or on captions (text_encoder), not both"
                )
            if self.data.captions is None:
                raise NanodiffError(f"text_encoder needs captions, and {self.data.name} has none")
            encoder = load_text_encoder(cfg.data.text_encoder, cfg.data.max_tokens)
            self.prompts, self.prompt_index, _ = encode_unique(encoder, self.data.captions)
            self.grid_prompts = encoder(grid_prompts(cfg, self.data.captions))
        if cfg.data.autoencoder == "train":  # "autoencoder included": its folder then stands in the config
            cfg.data.autoencoder = self._train_autoencoder(cfg)
        self.autoencoder = None  # latent diffusion: kept to decode the sample grids
        self.grid_images = self.data.images[: cfg.run.sample_n]  # an editing task's grids start from these
        if cfg.data.autoencoder:  # train on the scaled posterior means, encoded once
            self.data.images = self._encode(cfg.data.autoencoder, self.data.images)
        text_dim = 0 if self.prompts is None else self.prompts.shape[-1] - 1
        self.cfg = cfg if resume else validate(prepare_config(cfg, self.data, text_dim), training=True)
        o = self.cfg.optim
        if o.batch_size % (o.grad_accum * self.dist.world):
            raise NanodiffError(
                f"batch_size {o.batch_size} must divide by grad_accum x processes "
                f"({o.grad_accum} x {self.dist.world})"
            )
        torch.manual_seed(self.cfg.run.seed)  # same initial weights on every rank
        self.denoiser = build_denoiser(self.cfg).to(self.device)
        self.noise_gen = torch.Generator().manual_seed(self.cfg.run.seed + 1)
        r = self.cfg.run
        self.loop = Loop(
            self.denoiser.net,
            self.step_function(),
            o,
            r.steps,
            folder=self.run_dir,
            ema=self.cfg.ema,
            generators={"noise": self.noise_gen},
            dist=self.dist,
            device=self.device,
            log_every=r.log_every,
            checkpoint_every=r.checkpoint_every,
            keep=r.keep_checkpoints,
            progress=self.progress,
        )
        if resume:  # a run killed before its first checkpoint starts again
            self.loop.load(from_start_if_none=True)
        self.model, self.train_denoiser = self.loop.net, self.denoiser  # model: DDP's under torchrun
        if self.dist.world > 1:
            self.train_denoiser = build_denoiser(self.cfg, self.model)

    # the loop's state, under the names the benchmarks use
    step = property(lambda self: self.loop.step)
    ema = property(lambda self: self.loop.ema)
    opt = property(lambda self: self.loop.opt)

    def _train_autoencoder(self, cfg: Config) -> str:
        """Train the run's autoencoder into RUN/autoencoder (kept if a stopped run left one, and
        continued if it left a checkpoint), with its held-out PSNR and reconstructions (held out:
        the test split's first 500 images, or the last 500 training images for a folder or .npz,
        which then still train the UNet). Rank 0 trains it alone; the others wait."""
        folder = self.run_dir / "autoencoder"
        d = cfg.data
        if self.dist.main and not (folder / AE_CONFIG).is_file():
            frames = as_frames(self.data.images)  # a video's autoencoder is an image one, per frame
            held_out = held_out_images(d.name, frames, d.image_size, d.channels)
            ae_cfg = AutoencoderConfig(in_channels=frames.shape[1], channels=d.autoencoder_channels)
            if self.progress:
                tqdm.write(f"training the autoencoder ({d.autoencoder_steps} steps) into {folder}")
            report = train_autoencoder_folder(
                frames,
                held_out,
                ae_cfg,
                folder,
                d.autoencoder_steps,
                d.autoencoder_batch_size,
                seed=cfg.run.seed,
                device=self.device,
                progress=self.progress,
                about={"data": d.name},
                resume=latest_checkpoint(folder / AE_CHECKPOINT) is not None,
                dist=Dist(),
            )
            if not report["finished"]:  # Ctrl-C: the autoencoder's checkpoint is saved, the run stops
                raise KeyboardInterrupt
            if self.progress:
                tqdm.write(f"autoencoder: held-out PSNR {report['psnr']:.2f} dB in {report['seconds']:.0f} s")
        if self.dist.world > 1:
            dist.barrier()  # the other processes read what rank 0 wrote
        return str(folder)

    def _encode(self, folder: str, images: torch.Tensor) -> torch.Tensor:
        from nanodiffusion.io.checkpoint import load_autoencoder

        ae = self.autoencoder = load_autoencoder(folder, self.device)
        if ae.cfg.in_channels != images.shape[1]:
            raise NanodiffError(
                f"the autoencoder in {folder} takes {ae.cfg.in_channels}-channel images, "
                f"the data has {images.shape[1]}"
            )
        return ae.encode_images(images, progress=self.progress)

    def save(self) -> None:
        self.loop.save()

    # --- one optimisation step --------------------------------------------------------
    def step_function(self):
        """The loss of one micro-batch: this rank's rows of global micro-batch `micro` of step `step`."""
        cfg, o = self.cfg, self.cfg.optim
        micro_batch = o.batch_size // o.grad_accum
        mine = self.dist.rows(micro_batch)

        def micro_loss(step: int, micro: int) -> torch.Tensor:
            idx = batch_indices(step, micro, o.grad_accum, micro_batch, len(self.data.images), cfg.run.seed)
            # noise for the whole global micro-batch, so every world size draws the same
            sigma = sample_sigmas(cfg.schedule, micro_batch, cfg.loss, self.noise_gen)
            eps = torch.randn(micro_batch, *self.data.images.shape[1:], generator=self.noise_gen)
            labels = None
            if cfg.model.num_classes:
                labels = self.data.labels[idx].clone()
                drop = torch.rand(micro_batch, generator=self.noise_gen) < cfg.data.p_uncond
                labels[drop] = cfg.model.num_classes
                labels = labels[mine].to(self.device)
            elif self.prompts is not None:  # the prompt, or "" (row 0) with probability p_uncond
                rows = self.prompt_index[idx].clone()
                rows[torch.rand(micro_batch, generator=self.noise_gen) < cfg.data.p_uncond] = 0
                labels = self.prompts[rows[mine]].to(self.device)
            x0 = self.data.images[idx][mine].to(self.device)
            # the task's condition and target (drawn for the whole micro-batch, this rank's rows kept)
            denoiser, x0, eps = get_task(cfg.data.task).batch(
                cfg, self.train_denoiser, x0, eps[mine].to(self.device), self.noise_gen, micro_batch, mine
            )
            with torch.autocast("cuda", torch.bfloat16, enabled=self.device.type == "cuda"):
                return diffusion_loss(denoiser, x0, sigma[mine].to(self.device), eps, cfg.loss, labels)

        return micro_loss

    def train_step(self) -> float:
        """One optimisation step through the loop (the benchmarks' entry: they may change
        cfg.run.steps between steps, and the schedule follows)."""
        self.loop.steps = self.cfg.run.steps
        return self.loop.step_once()

    # --- sample grids and the run ---------------------------------------------------------
    def sample_grid(self, path: Path) -> None:
        from nanodiffusion.io.viz import save_grid

        ema = build_denoiser(self.cfg, self.ema.model).to(self.device)
        if self.cfg.data.modality == "molecule":  # 2-D depictions of the molecules drawn
            from nanodiffusion.inference.molecules import draw_molecules
            from nanodiffusion.io.molecules import draw_grid

            r = self.cfg.run
            mols = draw_molecules(self.cfg, ema, r.sample_n, sampler=r.sampler, steps=r.sample_steps)
            draw_grid(mols, path, per_row=int(math.sqrt(r.sample_n)))
            return
        labels, uncond, guidance = None, None, 1.0
        if self.cfg.model.num_classes:
            labels = torch.arange(self.cfg.run.sample_n) % self.cfg.model.num_classes
            guidance = self.cfg.run.sample_guidance
        elif self.prompts is not None:  # the grid prompts, in turn, guided away from ""
            labels = self.grid_prompts[torch.arange(self.cfg.run.sample_n) % len(self.grid_prompts)]
            uncond, guidance = self.prompts[0].to(self.device), self.cfg.run.sample_guidance
        n, shown = self.cfg.run.sample_n, self.grid_images[: self.cfg.run.sample_n]
        editing = get_task(self.cfg.data.task).grid(self.cfg, shown)  # a task's grid may edit training images
        if editing:
            n = len(shown)
        # a latent run's grid is decoded by the autoencoder loaded to encode the data
        images = draw(
            self.cfg,
            ema,
            n,
            autoencoder=self.autoencoder,
            cond=labels,
            sampler=self.cfg.run.sampler,
            steps=self.cfg.run.sample_steps,
            seed=0,
            guidance=guidance,
            uncond=uncond,
            **editing,
        )
        d = self.cfg.data
        save_grid(
            images,
            path,
            int(math.sqrt(self.cfg.run.sample_n)),
            modality=d.modality,
            sample_rate=d.sample_rate,
        )

    def fit(self, stop_after: int | None = None) -> bool:
        """Train to cfg.run.steps (or stop_after). Returns False if interrupted by Ctrl-C."""
        cfg = self.cfg
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "samples").mkdir(exist_ok=True)
            save_config(cfg, self.run_dir)
        self.loop.steps = cfg.run.steps

        def grid(step: int) -> None:
            self.sample_grid(self.run_dir / "samples" / f"step_{step:07d}.png")

        return self.loop.fit(stop_after, every=[(cfg.run.sample_every, grid)], finish=self._finish)

    def _finish(self) -> None:
        from nanodiffusion.io.viz import plot_loss

        plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        self.sample_grid(self.run_dir / "samples.png")


def train(cfg: Config, run_dir: str | Path, progress: bool = True, stop_after: int | None = None) -> bool:
    """Train a new run into run_dir. Returns False if interrupted (a checkpoint was saved)."""
    run_dir = Path(run_dir)
    if latest_checkpoint(run_dir) is not None:
        raise NanodiffError(
            f"{run_dir} already holds a run; resume it with resume() or choose another folder"
        )
    return Trainer(cfg, run_dir, progress=progress).fit(stop_after)


def resume(
    run_dir: str | Path,
    steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> bool:
    """Continue a run exactly where it stopped (optionally to a new total of steps, or elsewhere)."""
    cfg = load_config(run_dir)
    if steps is not None:
        cfg.run.steps = steps
    if device is not None:
        cfg.run.device = device
    return Trainer(cfg, Path(run_dir), resume=True, progress=progress).fit(stop_after)
