"""Sample quality per training budget: nanodiffusion against diffusers' example recipe on Fashion-MNIST.

Three trainings run one after the other, each for the same wall-clock budget: nanodiffusion's
`fashion-mnist` preset, diffusers' unconditional training example as it comes (UNet2DModel,
DDPMScheduler, AdamW lr 1e-4 after 500 warm-up steps, cosine, EMA with warm-up), and the same
with lr 1e-3 after 50 warm-up steps. Each is then sampled from its EMA weights at a few step
counts with two or three samplers, plus a converged reference, from the same starting noise, and
scored with FID, KID, precision and recall at one fixed N, next to the real-vs-real FID floor.
nanodiffusion's checkpoints along its run give FID against training time, with a cheaper metric.

Everything is kept under the output folder (trainings, samples as 8-bit images, metrics in
results.json), so `--reuse` continues an interrupted run where it stopped.

    python bench/quality.py           # 3 x 10 min of training, then sampling and Inception features at
                                      # N = 1000: about 3.5-4 hours on 2 CPU cores (the estimate is printed
                                      # first, with the --n that fits 90 minutes); rewrites its docs section
    python bench/quality.py --reuse   # continue an interrupted run, skipping finished parts
    python bench/quality.py --quick   # a smoke test of every code path; writes a file only when given --out
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from _common import DOC, BudgetClock, forward_flops, machine, write_section
from nanodiffusion.data.datasets import load_data
from nanodiffusion.inference.pipelines import build_denoiser, load_run, pick_device, sample_images
from nanodiffusion.io.checkpoint import load_config, load_weights, save_config, save_weights
from nanodiffusion.io.config import preset
from nanodiffusion.training.classifier import evaluate_images
from nanodiffusion.training.diffusion import Trainer

DATASET = "fashion-mnist"
SHAPE = (1, 28, 28)
BATCH = 64
T_TRAIN = 1000
SECTION = "quality"
OUT_DEFAULT = Path("runs/bench-quality")
RESULTS = "results.json"

# diffusers' unconditional training example (examples/unconditional_image_generation/train_unconditional.py):
# its defaults for the optimiser, the schedule of the learning rate, the EMA and the clipping
DIFFUSERS_ADAM = {"betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8}
DIFFUSERS_EMA = {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 3 / 4}
DIFFUSERS_UNET = {
    "sample_size": SHAPE[1],
    "in_channels": SHAPE[0],
    "out_channels": SHAPE[0],
    "layers_per_block": 2,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}


@dataclass(frozen=True)
class Recipe:
    name: str  # folder and key
    label: str  # in tables and plots
    library: str  # nanodiffusion | diffusers
    lr: float = 0.0  # diffusers only: peak learning rate and linear warm-up steps
    warmup: int = 0
    color: str = "black"


RECIPES = (
    Recipe("nanodiffusion", "nanodiffusion `fashion-mnist` preset", "nanodiffusion", color="tab:blue"),
    Recipe(
        "diffusers-lr1e-4",
        "diffusers example defaults (lr 1e-4, 500 warm-up)",
        "diffusers",
        1e-4,
        500,
        color="tab:orange",
    ),
    Recipe(
        "diffusers-lr1e-3", "diffusers example, lr 1e-3, 50 warm-up", "diffusers", 1e-3, 50, color="tab:green"
    ),
)
RECIPE = {r.name: r for r in RECIPES}

# samplers per library: the first-named second-order one also draws the converged reference
NANO_SAMPLERS = ("ddim", "dpm++2m", "unipc")
NANO_REFERENCE = "dpm++2m"
DIFFUSERS_SAMPLERS = ("DDIMScheduler", "DPMSolverMultistepScheduler")
DIFFUSERS_REFERENCE = "DPMSolverMultistepScheduler"
SAMPLER_LABEL = {
    "ddim": "DDIM",
    "dpm++2m": "DPM++(2M)",
    "unipc": "UniPC",
    "DDIMScheduler": "`DDIMScheduler`",
    "DPMSolverMultistepScheduler": "`DPMSolverMultistepScheduler`",
}
LINESTYLE = {
    "ddim": ":",
    "dpm++2m": "-",
    "unipc": "--",
    "DDIMScheduler": ":",
    "DPMSolverMultistepScheduler": "-",
}
MARKER = {"ddim": "s", "dpm++2m": "o", "unipc": "^", "DDIMScheduler": "s", "DPMSolverMultistepScheduler": "o"}


@dataclass
class Settings:
    out: Path
    budget_s: float
    n: int
    steps: tuple[int, ...]
    ref_steps: int
    features: str
    checkpoints: int
    checkpoint_n: int
    checkpoint_steps: int
    checkpoint_features: str
    device: str
    batch: int
    seed: int
    diffusers_reference: bool = False  # the targets need only nanodiffusion's converged FID


# --- results.json: what is done ---------------------------------------------------------------
class Results:
    """results.json in the output folder: trainings, samples and metrics, written after each part."""

    def __init__(self, folder: Path, reuse: bool):
        self.path = folder / RESULTS
        self.data = {"trainings": {}, "samples": {}, "metrics": {}}
        if reuse and self.path.is_file():
            self.data.update(json.loads(self.path.read_text()))

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)

    def forget(self, recipe: str) -> None:
        """Drop the samples and metrics of a training that is being redone."""
        for part in ("samples", "metrics"):
            self.data[part] = {k: v for k, v in self.data[part].items() if not k.startswith(recipe + "/")}


def _prepare_out(out: Path, reuse: bool) -> None:
    if out.exists() and not reuse:
        if any(out.iterdir()) and not (out / RESULTS).exists():
            sys.exit(f"{out} exists and was not written by this benchmark; choose another --out-dir")
        print(f"starting afresh: removing {out} (pass --reuse to continue it instead)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# --- training ---------------------------------------------------------------------------------
def _diffusers_cosine(step: int, warmup: int, total: int) -> float:
    """diffusers' get_cosine_schedule_with_warmup, with the total steps passed in at each step."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _flops_cpu(net: torch.nn.Module, call) -> int:
    """Forward FLOPs of one image, counted on a CPU copy (the CPU attention kernel is counted)."""
    twin = copy.deepcopy(net).cpu().eval()
    return forward_flops(lambda: call(twin))


def _mean_tail(losses: list[float], k: int = 50) -> float:
    tail = losses[-k:]
    return sum(tail) / len(tail)


def train_nanodiffusion(s: Settings, run_dir: Path) -> dict:
    """The preset through nanodiffusion's Trainer, one train_step at a time until the budget is
    spent, with EMA snapshots at even fractions of it for the FID-against-time plot."""
    cfg = preset(DATASET)
    cfg.run.device, cfg.run.seed = s.device, s.seed
    trainer = Trainer(cfg, run_dir, progress=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    net = trainer.denoiser.net
    info = {
        "params": _count_params(net),
        "flops": _flops_cpu(net, lambda m: m(torch.zeros(1, *SHAPE), torch.zeros(1))),
    }
    clock, losses, checkpoints = BudgetClock(s.budget_s), [], []

    def snapshot() -> None:
        k = len(checkpoints) + 1
        path = run_dir / "checkpoints" / f"ema-{k}.safetensors"
        save_weights(trainer.ema.model, path, trainer.step)
        checkpoints.append(
            {"k": k, "path": str(path.relative_to(s.out)), "step": trainer.step, "seconds": clock.used}
        )

    trainer.model.train()
    while not clock.done:
        trainer.cfg.run.steps = clock.planned_steps(trainer.step)
        start = time.perf_counter()
        losses.append(trainer.train_step())
        clock.used += time.perf_counter() - start
        every = s.budget_s / s.checkpoints
        while len(checkpoints) < s.checkpoints - 1 and clock.used >= (len(checkpoints) + 1) * every:
            snapshot()
        _progress("nanodiffusion", trainer.step, clock, losses)
    snapshot()
    trainer.cfg.run.steps = trainer.step  # the config records the run as it went
    trainer.save()
    save_config(trainer.cfg, run_dir)
    return {
        **info,
        "steps": trainer.step,
        "seconds": clock.used,
        "images_per_s": trainer.step * BATCH / clock.used,
        "final_loss": _mean_tail(losses),
        "checkpoints": checkpoints,
        "schedule": f"lr {cfg.optim.lr:g}, {cfg.optim.warmup_steps} warm-up steps, cosine to "
        f"{cfg.optim.min_lr_ratio:g} x lr; EMA power {cfg.ema.power:.3g}",
    }


def _progress(name: str, step: int, clock: BudgetClock, losses: list[float]) -> None:
    if step % 50 == 0:
        print(
            f"  {name}: step {step}, {clock.used:.0f}/{clock.budget_s:.0f} s, "
            f"loss {_mean_tail(losses, 50):.4f}",
            flush=True,
        )


def diffusers_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**DIFFUSERS_UNET)


def train_diffusers(s: Settings, recipe: Recipe, run_dir: Path) -> dict:
    """diffusers' unconditional training example, step for step, on the images in [-1, 1]."""
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.training_utils import EMAModel

    device = pick_device(s.device)
    images = load_data(DATASET, "train").images
    torch.manual_seed(s.seed)
    unet = diffusers_unet()
    one = (torch.zeros(1, *SHAPE), torch.zeros(1, dtype=torch.long))
    info = {"params": _count_params(unet), "flops": _flops_cpu(unet, lambda m: m(*one).sample)}
    unet.to(device).train()
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=T_TRAIN, beta_schedule="linear", prediction_type="epsilon"
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=recipe.lr, **DIFFUSERS_ADAM)
    ema = EMAModel(unet.parameters(), **DIFFUSERS_EMA)
    order_gen = torch.Generator().manual_seed(s.seed)
    order, pos = torch.randperm(len(images), generator=order_gen), 0
    clock, losses, step = BudgetClock(s.budget_s), [], 0
    while not clock.done:
        lr = recipe.lr * _diffusers_cosine(step, recipe.warmup, clock.planned_steps(step))
        for group in opt.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        if pos + BATCH > len(order):  # a new epoch, reshuffled, as the example's DataLoader does
            order, pos = torch.randperm(len(images), generator=order_gen), 0
        clean = images[order[pos : pos + BATCH]].to(device)
        pos += BATCH
        noise = torch.randn(clean.shape).to(device)
        timesteps = torch.randint(0, T_TRAIN, (BATCH,)).to(device)
        loss = F.mse_loss(unet(noise_scheduler.add_noise(clean, noise, timesteps), timesteps).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        losses.append(loss.item())
        step += 1
        clock.used += time.perf_counter() - start
        _progress(recipe.name, step, clock, losses)
    ema.copy_to(unet.parameters())  # the EMA weights are what is sampled
    DDPMPipeline(unet=unet.eval(), scheduler=noise_scheduler).save_pretrained(run_dir)
    return {
        **info,
        "steps": step,
        "seconds": clock.used,
        "images_per_s": step * BATCH / clock.used,
        "final_loss": _mean_tail(losses),
        "planned_steps_at_end": clock.planned_steps(step),
        "schedule": f"AdamW lr {recipe.lr:g} (betas 0.95, 0.999, weight decay 1e-6), {recipe.warmup} "
        f"warm-up steps, cosine to 0; EMA power 3/4 with warm-up, max decay 0.9999",
    }


# --- sampling ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSet:
    recipe: str
    sampler: str
    steps: int
    n: int
    seed: int
    checkpoint: int = 0  # 0: the end of the training; k: nanodiffusion's k-th snapshot

    @property
    def key(self) -> str:
        where = f"ckpt{self.checkpoint}/" if self.checkpoint else ""
        return f"{self.recipe}/{where}{self.sampler}/{self.steps}/n{self.n}/seed{self.seed}"

    def file(self, out: Path) -> Path:
        return out / "samples" / (self.key.replace("/", "_").replace("+", "p") + ".safetensors")

    @property
    def library(self) -> str:
        return RECIPE[self.recipe].library


def starting_noise(n: int, seed: int) -> torch.Tensor:
    """The noise every set starts from: what nanodiffusion's sample_images draws for this seed."""
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def load_nanodiffusion(s: Settings, checkpoint: int = 0):
    run_dir = s.out / "nanodiffusion"
    if not checkpoint:
        return load_run(run_dir, "ema", s.device)[1]
    denoiser = build_denoiser(load_config(run_dir))
    load_weights(denoiser.net, run_dir / "checkpoints" / f"ema-{checkpoint}.safetensors")
    return denoiser.to(pick_device(s.device)).eval()


def load_diffusers_pipeline(s: Settings, recipe: str):
    from diffusers import DDPMScheduler, UNet2DModel

    folder = s.out / recipe
    unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True, low_cpu_mem_usage=False)
    return unet.to(pick_device(s.device)).eval(), DDPMScheduler.from_pretrained(folder / "scheduler")


def diffusers_scheduler(name: str, train_scheduler):
    """The sampling scheduler built from the training scheduler's config, as diffusers' docs do,
    with trailing timestep spacing (the first step at t = T - 1), like nanodiffusion's default."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    cls = {"DDIMScheduler": DDIMScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}[name]
    return cls.from_config(train_scheduler.config, timestep_spacing="trailing")


@torch.no_grad()
def sample_diffusers(
    unet, scheduler, noise: torch.Tensor, steps: int, batch: int
) -> tuple[torch.Tensor, int]:
    """The hand-written loop of diffusers' docs: scale_model_input, unet, scheduler.step. Returns
    the images in [-1, 1] and the network evaluations per image."""
    device = next(unet.parameters()).device
    out, calls = [], 0
    for chunk in noise.split(batch):
        scheduler.set_timesteps(steps)  # also resets a multistep solver's history
        x = chunk.to(device) * scheduler.init_noise_sigma
        calls = 0
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t).sample
            calls += 1
            x = scheduler.step(eps, t, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out), calls


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the 8-bit pixels a PNG would hold (lossless for the metrics, which quantise too)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_samples(path: Path) -> torch.Tensor:
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("images").float() / 127.5 - 1


def draw(s: Settings, results: Results, item: SampleSet, models: dict) -> None:
    """Sample one set (unless results.json has it) and save it as 8-bit images."""
    path = item.file(s.out)
    if item.key in results.data["samples"] and path.is_file():
        return
    model_key = (item.recipe, item.checkpoint)
    if model_key not in models:
        models.clear()  # one model in memory at a time
        models[model_key] = (
            load_nanodiffusion(s, item.checkpoint)
            if item.library == "nanodiffusion"
            else load_diffusers_pipeline(s, item.recipe)
        )
    start = time.perf_counter()
    if item.library == "nanodiffusion":
        stats: dict = {}
        images = sample_images(
            models[model_key],
            item.n,
            SHAPE,
            item.sampler,
            item.steps,
            seed=item.seed,
            batch_size=s.batch,
            stats=stats,
        )
        nfe = stats["nfe"]
    else:
        unet, train_scheduler = models[model_key]
        images, nfe = sample_diffusers(
            unet,
            diffusers_scheduler(item.sampler, train_scheduler),
            starting_noise(item.n, item.seed),
            item.steps,
            s.batch,
        )
    seconds = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"images": _to_uint8(images).contiguous()}, str(path))
    results.data["samples"][item.key] = {"path": str(path.relative_to(s.out)), "nfe": nfe, "seconds": seconds}
    results.save()
    print(f"  sampled {item.key}: {item.n} images, {nfe} NFE, {seconds:.0f} s", flush=True)


def score(s: Settings, results: Results, item: SampleSet, features: str) -> dict:
    """Metrics of one set (unless results.json has them)."""
    key = f"{item.key}/{features}"
    if key not in results.data["metrics"]:
        start = time.perf_counter()
        metrics = evaluate_images(
            load_samples(item.file(s.out)),
            dataset=DATASET,
            features=features,
            device=s.device,
            progress=sys.stderr.isatty(),
        )
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        metrics["seconds"] = time.perf_counter() - start
        results.data["metrics"][key] = metrics
        results.save()
        print(
            f"  scored {key}: FID {metrics['fid']:.2f} (floor {metrics['floor_fid']:.2f}), "
            f"{metrics['seconds']:.0f} s",
            flush=True,
        )
    return results.data["metrics"][key]


def main_sets(s: Settings) -> list[SampleSet]:
    """Every training at every step count with each of its samplers, then the references."""
    sets = []
    for recipe in RECIPES:
        names = NANO_SAMPLERS if recipe.library == "nanodiffusion" else DIFFUSERS_SAMPLERS
        reference = NANO_REFERENCE if recipe.library == "nanodiffusion" else DIFFUSERS_REFERENCE
        for steps in s.steps:
            sets += [SampleSet(recipe.name, name, steps, s.n, s.seed) for name in names]
        wanted = recipe.library == "nanodiffusion" or s.diffusers_reference
        if wanted and s.ref_steps not in s.steps:
            sets.append(SampleSet(recipe.name, reference, s.ref_steps, s.n, s.seed))
    return sets


def checkpoint_sets(s: Settings) -> list[SampleSet]:
    return [
        SampleSet("nanodiffusion", NANO_REFERENCE, s.checkpoint_steps, s.checkpoint_n, s.seed, k)
        for k in range(1, s.checkpoints + 1)
    ]


# --- the time estimate ------------------------------------------------------------------------
def _rate(forward, batch: int, repeats: int = 2) -> float:
    """Images per second through `forward` on a batch (best of a few timings)."""
    forward()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        best = min(best, time.perf_counter() - start)
    return batch / best


@torch.no_grad()
def measure_speeds(s: Settings) -> dict[str, float]:
    """Network evaluations per second of both UNets, and feature images per second."""
    device = pick_device(s.device)
    cfg = preset(DATASET)
    cfg.model.in_channels = cfg.model.out_channels = SHAPE[0]
    nano = build_denoiser(cfg).to(device).eval()
    unet = diffusers_unet().to(device).eval()
    batch = min(s.batch, max(s.n, s.checkpoint_n))
    x = torch.randn(batch, *SHAPE, device=device)
    speeds = {
        "nanodiffusion": _rate(lambda: nano(x, torch.ones(batch, device=device)), batch),
        "diffusers": _rate(lambda: unet(x, torch.full((batch,), 500, device=device)).sample, batch),
    }
    for features in {s.features, s.checkpoint_features}:
        speeds[features] = _feature_rate(features, device)
    return speeds


def _feature_rate(features: str, device: torch.device) -> float:
    """Inception images per second, timed on 20 images (classifier features: practically free)."""
    if features != "inception":
        return 2000.0
    try:
        from nanodiffusion.metrics.fid import feature_net

        net = feature_net("inception").to(device)
    except Exception:  # evaluate.py's internals may differ; 5 images/s is what 2 cores give
        return 5.0
    x = torch.rand(20, *SHAPE, device=device) * 2 - 1
    return _rate(lambda: net(x), 20, repeats=1)


def estimate(
    s: Settings, results: Results, speeds: dict[str, float], n: int | None = None
) -> dict[str, float]:
    """Seconds each stage still needs (what results.json holds is free). `n` replaces --n."""
    done = results.data
    trainings = sum(s.budget_s + 20 for r in RECIPES if r.name not in done["trainings"])
    sampling = features = 0.0
    for item, feats in [(i, s.features) for i in main_sets(s)] + [
        (i, s.checkpoint_features) for i in checkpoint_sets(s)
    ]:
        size = n if (n is not None and not item.checkpoint) else item.n
        if item.key not in done["samples"]:
            sampling += item.steps * size / speeds[item.library]
        if f"{item.key}/{feats}" not in done["metrics"]:
            features += size / speeds[feats]
    # the real images' features (test[:N] and train[:N]), at most once per N and features
    features += 2 * (n or s.n) / speeds[s.features] + 2 * s.checkpoint_n / speeds[s.checkpoint_features]
    return {"training": trainings, "sampling": sampling, "features": features}


def print_estimate(s: Settings, results: Results, speeds: dict[str, float]) -> float:
    parts = estimate(s, results, speeds)
    total = sum(parts.values())
    print(
        f"speeds on this machine: nanodiffusion UNet {speeds['nanodiffusion']:.0f} and diffusers UNet "
        f"{speeds['diffusers']:.0f} network evaluations/s; {s.features} features "
        f"{speeds[s.features]:.1f} images/s"
    )
    print(
        "expected time: "
        + ", ".join(f"{k} {v / 60:.0f} min" for k, v in parts.items())
        + f"; about {total / 60:.0f} min in all",
        flush=True,
    )
    if total > 95 * 60 and not results.data["trainings"]:
        fits = [n for n in range(50, s.n, 10) if sum(estimate(s, results, speeds, n).values()) <= 90 * 60]
        if fits:
            print(
                f"  (to finish in about 90 minutes here, pass --n {fits[-1]}; FID at a small N is biased "
                "upwards, and the real-vs-real floor at that N shows by how much)",
                flush=True,
            )
    return total


# --- the report -------------------------------------------------------------------------------
def _fmt(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def _plain_log_labels(ax, x: bool = True) -> None:
    """Tick labels such as 20 and 40 rather than 2 x 10^1 on log axes, minor ticks included."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    if x:
        ax.xaxis.set_major_formatter(plain)


def plot_fid_nfe(s: Settings, rows: list[tuple[SampleSet, dict]], floor: float, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for recipe in RECIPES:
        for name in NANO_SAMPLERS + DIFFUSERS_SAMPLERS:
            points = sorted(
                (i.steps, m["fid"]) for i, m in rows if i.recipe == recipe.name and i.sampler == name
            )
            if points:
                short = SAMPLER_LABEL[name].strip("`").replace("Scheduler", "").replace("Multistep", "")
                ax.plot(
                    *zip(*points, strict=True),
                    color=recipe.color,
                    linestyle=LINESTYLE[name],
                    marker=MARKER[name],
                    label=f"{recipe.label.replace('`', '')}: {short}",
                )
    ax.axhline(floor, color="gray", linestyle="--", label="real-vs-real floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(set(s.steps) | {s.ref_steps})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    _plain_log_labels(ax)
    ax.set_xlabel("network evaluations per image (NFE)")
    ax.set_ylabel(f"FID, N = {s.n}")
    ax.set_title(f"FID against NFE after {s.budget_s / 60:g} min of training each")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_fid_time(s: Settings, points: list[tuple[float, int, dict]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    minutes = [sec / 60 for sec, _, _ in points]
    ax.plot(
        minutes,
        [m["fid"] for _, _, m in points],
        color=RECIPE["nanodiffusion"].color,
        marker="o",
        label=f"nanodiffusion, {SAMPLER_LABEL[NANO_REFERENCE]} {s.checkpoint_steps} steps",
    )
    for (_, step, m), x in zip(points, minutes, strict=True):
        ax.annotate(f"{step}", (x, m["fid"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(points[-1][2]["floor_fid"], color="gray", linestyle="--", label="real-vs-real floor")
    ax.set_yscale("log")
    _plain_log_labels(ax, x=False)
    ax.set_xlabel("training time, minutes (labels: steps)")
    ax.set_ylabel(f"FID, {s.checkpoint_features} features, N = {s.checkpoint_n}")
    ax.set_title("nanodiffusion: FID of the EMA weights along the run")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def plot_grids(s: Settings, panels: list[tuple[str, torch.Tensor]], path: Path) -> None:
    from matplotlib.figure import Figure

    from nanodiffusion.io.viz import to_pil

    fig = Figure(figsize=(3.2 * len(panels), 3.6), layout="constrained")
    for ax, (title, images) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        ax.imshow(to_pil(images[:64], nrow=8), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _best(rows: list[tuple[SampleSet, dict]], **match) -> tuple[SampleSet, dict] | None:
    found = [(i, m) for i, m in rows if all(getattr(i, k) == v for k, v in match.items())]
    return min(found, key=lambda r: r[1]["fid"]) if found else None


def _where(item: SampleSet) -> str:
    return f"{SAMPLER_LABEL[item.sampler]}, {item.steps} steps"


def verdict(s: Settings, rows: list[tuple[SampleSet, dict]], floor: float) -> list[str]:
    """The issue's three targets, each reached or missed, with the margin."""
    nano20 = _best(rows, recipe="nanodiffusion", steps=20)
    nano10 = _best(rows, recipe="nanodiffusion", steps=10)
    converged = _best(rows, recipe="nanodiffusion", steps=s.ref_steps)
    diffusers = [(i, m) for i, m in rows if i.library == "diffusers" and i.steps <= 50]
    best_diffusers = min(diffusers, key=lambda r: r[1]["fid"]) if diffusers else None
    lines = []
    if nano20 and best_diffusers:
        (i, m), (j, d) = nano20, best_diffusers
        ratio = m["fid"] / d["fid"]
        state = "**reached**" if ratio <= 0.5 else "**missed**"
        lines.append(
            f"- FID at 20 NFE at most half the best diffusers FID up to 50 steps: {state}. nanodiffusion "
            f"{_fmt(m['fid'])} ({_where(i)}) against {_fmt(d['fid'])} ({RECIPE[j.recipe].label}, "
            f"{_where(j)}): {ratio:.2f}x, target 0.5x"
            + ("." if ratio <= 0.5 else f"; it would need to be {ratio / 0.5:.2f}x lower.")
        )
        ratio = m["fid"] / floor
        state = "**reached**" if ratio <= 3 else "**missed**"
        lines.append(
            f"- FID at 20 NFE at most 3x the real-vs-real floor at N = {s.n}: {state}. {_fmt(m['fid'])} "
            f"against a floor of {_fmt(floor)}: {ratio:.2f}x, target 3x"
            + ("." if ratio <= 3 else f"; {ratio / 3:.2f}x too high.")
        )
    else:
        lines.append("- The 20-NFE targets were not measured (20 is not among --steps).")
    if nano10 and converged:
        (i, m), (j, c) = nano10, converged
        excess = m["fid"] / c["fid"] - 1
        state = "**reached**" if excess <= 0.10 else "**missed**"
        lines.append(
            f"- FID at 10 NFE within 10% of the converged FID: {state}. {_fmt(m['fid'])} ({_where(i)}) "
            f"against {_fmt(c['fid'])} ({_where(j)}): {100 * excess:+.0f}%, target at most +10%."
        )
    else:
        lines.append("- The 10-NFE target was not measured (10 is not among --steps).")
    return lines


def report(s: Settings, results: Results, figures: Path) -> str:
    """The docs section in Markdown, with its three figures written into `figures`."""
    data = results.data
    rows = [(i, data["metrics"][f"{i.key}/{s.features}"]) for i in main_sets(s)]
    ck_rows = [(i, data["metrics"][f"{i.key}/{s.checkpoint_features}"]) for i in checkpoint_sets(s)]
    first = rows[0][1]
    floor = first["floor_fid"]
    plot_fid_nfe(s, rows, floor, figures / "quality_fid_nfe.png")
    ckpts = data["trainings"]["nanodiffusion"]["checkpoints"]
    plot_fid_time(
        s,
        [(c["seconds"], c["step"], m) for c, (_, m) in zip(ckpts, ck_rows, strict=True)],
        figures / "quality_fid_time.png",
    )
    grid_steps = 20 if 20 in s.steps else max(s.steps)
    real = load_data(DATASET, "test").images[:64]
    panels = [("Fashion-MNIST test images", real)]
    for recipe in RECIPES:
        i, m = _best(rows, recipe=recipe.name, steps=grid_steps)
        panels.append(
            (
                f"{recipe.label.replace('`', '')}\n{SAMPLER_LABEL[i.sampler].strip('`')}, "
                f"{i.steps} steps: FID {_fmt(m['fid'], 1)}",
                load_samples(i.file(s.out)),
            )
        )
    plot_grids(s, panels, figures / "quality_grids.png")

    train_rows = [
        "| training | params | forward GFLOPs / image | images/s | steps reached "
        "| loss, last 50 steps | learning rate and EMA |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for recipe in RECIPES:
        t = data["trainings"][recipe.name]
        train_rows.append(
            f"| {recipe.label} | {t['params'] / 1e6:.2f}M | {t['flops'] / 1e9:.3f} | "
            f"{t['images_per_s']:.1f} | {t['steps']} | {t['final_loss']:.4f} | "
            f"{t['schedule']} |"
        )
    table = [
        "| training | sampler | NFE | FID | FID / floor | KID x 1000 | precision | recall | sampling s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, m in rows:
        ref = " (reference)" if i.steps == s.ref_steps else ""
        nfe = data["samples"][i.key]["nfe"]
        table.append(
            f"| {RECIPE[i.recipe].label} | {SAMPLER_LABEL[i.sampler]}{ref} | {nfe} | {_fmt(m['fid'])} | "
            f"{m['fid'] / floor:.2f} | {1000 * m['kid_mean']:.2f} +- {1000 * m['kid_std']:.2f} | "
            f"{m['precision']:.3f} | {m['recall']:.3f} | {data['samples'][i.key]['seconds']:.0f} |"
        )
    table.append(
        f"| real-vs-real floor: train[:{s.n}] against test[:{s.n}] | | | {_fmt(floor)} | 1.00 | | | | |"
    )
    ck_table = ["| snapshot | training time | steps | FID | floor |", "| ---: | ---: | ---: | ---: | ---: |"]
    for c, (_, m) in zip(ckpts, ck_rows, strict=True):
        ck_table.append(
            f"| {c['k']} | {c['seconds'] / 60:.1f} min | {c['step']} | {_fmt(m['fid'])} | "
            f"{_fmt(m['floor_fid'])} |"
        )
    # stage times as recorded with each part, so that runs continued with --reuse add up correctly
    stages = {
        "training": sum(t["seconds"] for t in data["trainings"].values()),
        "sampling": sum(v["seconds"] for v in data["samples"].values()),
        "features": sum(v.get("seconds", 0.0) for v in data["metrics"].values()),
    }
    took = f"{sum(stages.values()) / 60:.0f} minutes: " + ", ".join(
        f"{k} {v / 60:.0f} min" for k, v in stages.items()
    )
    budget = f"{s.budget_s / 60:g} minutes"
    schedule = load_config(s.out / "nanodiffusion").schedule
    spacing = (schedule.kind, schedule.default_spacing())
    nl = "\n"
    return f"""
## Sample quality per training budget: nanodiffusion against diffusers on Fashion-MNIST

Three trainings of {budget} each on this machine's CPU, sampled from their EMA weights and scored
with FID at N = {s.n} ({first["features"]}). The issue's targets:

{nl.join(verdict(s, rows, floor))}

- Machine: {machine()}; diffusers {version("diffusers")}; device {pick_device(s.device)}.
- Trainings, one after the other, each stopped when its own steps (data, forward, backward, optimiser,
  EMA) have taken {budget}; batch {BATCH}, Fashion-MNIST train split in [-1, 1], seed {s.seed}.
  nanodiffusion runs its `fashion-mnist` preset through `Trainer.train_step`. diffusers runs its
  unconditional training example step for step: `UNet2DModel` (widths 32, 64, 64, two ResNet
  blocks per level, `DownBlock2D, AttnDownBlock2D, DownBlock2D` and the matching up blocks:
  self-attention at 14x14 and in the middle block, head width 8), `DDPMScheduler` (linear betas,
  T = {T_TRAIN}, epsilon), MSE on the noise at a uniform step, gradient norm clipped to 1,
  AdamW with the example's defaults, `EMAModel` with warm-up (power 3/4). The third row changes
  only the learning rate and the warm-up. Every cosine decay is planned to end with the budget:
  its length is re-estimated from the measured steps/s after each step.
- Sampling: the same {s.n} starting noises for every row (seed {s.seed}). nanodiffusion:
  `sample_images` with its default sigma spacing for the preset's `{spacing[0]}` schedule
  ({spacing[1]}). diffusers: a hand loop over
  `DDIMScheduler` / `DPMSolverMultistepScheduler` made with `from_config` from the training
  scheduler and `timestep_spacing="trailing"` (so DDIM keeps the training config's
  `clip_sample=True`; DPM-Solver is `dpmsolver++`, order 2, lower order at the end). The
  reference rows are the second-order sampler at {s.ref_steps} steps (nanodiffusion only, unless
  `--diffusers-reference`: the targets need only nanodiffusion's converged FID, and each diffusers
  reference costs about 18 minutes of sampling here).
- Metrics: `nanodiffusion.metrics.fid.evaluate_images`: FID, KID (x 1000, mean +- std over subsets),
  precision and recall (k = {first.get("k", 3)}) of the samples against the first {first["n_ref"]} test
  images; features {first["features"]}, resize: {first["resize"]}. The floor is the FID of
  train[:{s.n}] against the same test images, at the same N and features.
- The run's parts took {took} (summed over the parts, whichever `--reuse` invocation ran them;
  the real images' features, computed once and cached, are not counted). "sampling s" is each
  set's wall time as it ran: a set sampled while other work shared the CPU reads slower than
  the network speeds this script measures at its start, so compare quality, not those seconds.

{nl.join(train_rows)}

{nl.join(table)}

![FID against NFE](images/quality_fid_nfe.png)

FID against training time, for nanodiffusion's EMA snapshots along its run, uses a cheaper
metric: {s.checkpoint_n} samples, {SAMPLER_LABEL[NANO_REFERENCE]} at {s.checkpoint_steps} steps,
{ck_rows[-1][1]["features"]} features, with its own floor. These numbers are not comparable with the
table above.

{nl.join(ck_table)}

![FID against training time](images/quality_fid_time.png)

The first 64 samples of each training at {grid_steps} steps, with its best sampler there, next to
test images; the same starting noise in every panel:

![sample grids](images/quality_grids.png)

Reproduce with `python bench/quality.py` (`--reuse` continues an interrupted run; the script
prints its time estimate first).
"""


# --- the run ----------------------------------------------------------------------------------
def run(s: Settings, reuse: bool, doc: Path | None) -> None:
    started = time.perf_counter()
    _prepare_out(s.out, reuse)
    results = Results(s.out, reuse)
    speeds = measure_speeds(s)
    print_estimate(s, results, speeds)

    for recipe in RECIPES:
        done = results.data["trainings"].get(recipe.name)
        same = done and (done["budget_s"], done["seed"]) == (s.budget_s, s.seed)
        if same and (s.out / recipe.name).is_dir():
            print(f"{recipe.name}: trained already ({done['steps']} steps)")
            continue
        print(f"training {recipe.name} for {s.budget_s:.0f} s", flush=True)
        run_dir = s.out / recipe.name
        shutil.rmtree(run_dir, ignore_errors=True)
        results.forget(recipe.name)
        info = (
            train_nanodiffusion(s, run_dir)
            if recipe.library == "nanodiffusion"
            else train_diffusers(s, recipe, run_dir)
        )
        results.data["trainings"][recipe.name] = {"budget_s": s.budget_s, "seed": s.seed, **info}
        results.save()
        print(f"{recipe.name}: {info['steps']} steps, {info['images_per_s']:.1f} images/s", flush=True)

    print_estimate(s, results, speeds)
    models: dict = {}
    for item in main_sets(s):
        draw(s, results, item, models)
        score(s, results, item, s.features)
    for item in checkpoint_sets(s):
        draw(s, results, item, models)
        score(s, results, item, s.checkpoint_features)

    figures = (doc.parent if doc is not None else s.out) / "images"
    results.data.setdefault("invocations_s", []).append(time.perf_counter() - started)
    results.save()
    section = report(s, results, figures)
    print(section)
    print(f"figures in {figures}")
    if doc is not None:
        write_section(SECTION, section, doc)
        print(f"wrote the {SECTION} section of {doc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets and N, for smoke tests")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"Markdown file to update (default {DOC}; --quick "
        "writes only when this is given); the figures go to images/ beside it",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="folder for runs, samples and metrics (default "
        f"{OUT_DEFAULT}, {OUT_DEFAULT}-quick with --quick)",
    )
    parser.add_argument("--reuse", action="store_true", help="keep what the output folder already holds")
    parser.add_argument("--budget-min", type=float, help="training minutes per recipe (default 10)")
    parser.add_argument("--n", type=int, help="samples per set for the metrics (default 1000)")
    parser.add_argument(
        "--steps",
        type=lambda t: tuple(int(v) for v in t.split(",")),
        help="sampler step counts, comma-separated (default 10,20,50)",
    )
    parser.add_argument("--ref-steps", type=int, help="steps of the converged reference (default 100)")
    parser.add_argument("--features", choices=("inception", "classifier"), help="default inception")
    parser.add_argument("--checkpoints", type=int, help="nanodiffusion snapshots along the run (default 6)")
    parser.add_argument("--checkpoint-n", type=int, help="samples per snapshot (default 500)")
    parser.add_argument(
        "--checkpoint-features", choices=("inception", "classifier"), help="default classifier"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch", type=int, default=250, help="sampling batch size (default 250)")
    parser.add_argument(
        "--diffusers-reference",
        action="store_true",
        help="also draw the diffusers trainings at --ref-steps (about 35 more minutes at "
        "N = 1000 on 2 cores; the targets need only nanodiffusion's reference)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    q = args.quick
    defaults = {
        "budget_min": 0.25 if q else 10.0,
        "n": 40 if q else 1000,
        "steps": (10, 20) if q else (10, 20, 50),
        "ref_steps": 25 if q else 100,
        "features": "classifier" if q else "inception",
        "checkpoints": 2 if q else 6,
        "checkpoint_n": 40 if q else 500,
        "checkpoint_features": "classifier",
    }
    val = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    if min(val["steps"]) < 1 or val["ref_steps"] < 1 or val["checkpoints"] < 1:
        parser.error("steps, --ref-steps and --checkpoints must be positive")
    steps = tuple(sorted(set(val["steps"])))
    s = Settings(
        out=args.out_dir or Path(f"{OUT_DEFAULT}-quick" if q else OUT_DEFAULT),
        budget_s=60 * val["budget_min"],
        n=val["n"],
        steps=steps,
        ref_steps=val["ref_steps"],
        features=val["features"],
        checkpoints=val["checkpoints"],
        checkpoint_n=val["checkpoint_n"],
        checkpoint_steps=20 if 20 in steps else max(steps),
        checkpoint_features=val["checkpoint_features"],
        device=args.device,
        batch=args.batch,
        seed=args.seed,
        diffusers_reference=args.diffusers_reference,
    )
    run(s, args.reuse, args.out or (None if q else DOC))


if __name__ == "__main__":
    main()
