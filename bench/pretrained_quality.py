"""Measure every shipped model (src/nanodiffusion/weights, the float16 weights as they ship), write
the numbers into weights/cards.json and each model's facts into docs/pretrained.md.

    python bench/pretrained_quality.py                 # all four: about 20 minutes on 2 busy cores
    python bench/pretrained_quality.py digits upscale  # some of them
    python bench/pretrained_quality.py --runs runs/pretrained --json fp32.json  # the training runs'
                                                       # float32 EMA weights instead; writes only the JSON

What each model is judged by (dpm++2m, 20 steps, seed 0 throughout):

- digits: the digits judge, a support-vector classifier on the 1437 training digits' pixels,
  reads 500 class-conditional samples (50 per class) at guidance 1 and 3;
  the fraction it reads as the class asked for, beside its accuracy on the 360 real test digits;
  and FID against those 360 with nanodiffusion's classifier features (not comparable to Inception FIDs).
- fashion-mnist: a classifier judge (metrics.fid.SmallClassifier, the classifier features' own
  network, trained on the 60,000 training images) reads 1000 samples (100 per class) at guidance 1
  and 3; FID, KID, precision and recall at guidance 1 with Inception-v3 features, N = 1000 against
  1000 test images: the numbers `nanodiff eval fashion-mnist --n 1000` prints.
- shapes: prompt adherence judged exactly by the shapes detector, 200 prompts and 100 with
  held-out colour-shape pairs at guidance 4: `nanodiff eval-prompts shapes --n 200 --held-out 100`.
- upscale: PSNR and SSIM against 500 held-out 64x64 scenes from their 32x32 versions, beside
  bicubic upsampling's: `nanodiff upscale upscale --demo --n 500`.

Each card also keeps `check`: a quick re-measurement (CHECKS) that tests/test_pretrained.py repeats
on every test run and compares with a tolerance.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import write_section
from nanodiffusion.data.datasets import SHAPES_TEST_SEED, load_data
from nanodiffusion.data.shapes import evaluate_prompts, render_scene
from nanodiffusion.inference.demos import upscale, upscale_demo
from nanodiffusion.inference.pipelines import TextToImage, draw, load_run
from nanodiffusion.io.pretrained import CARDS, SHIPPED, parameters, shipped_folder
from nanodiffusion.io.viz import to_uint8
from nanodiffusion.metrics.image import psnr
from nanodiffusion.tasks.upscale import downsample, low_size, upsample

DOC = Path(__file__).resolve().parent.parent / "docs" / "pretrained.md"
SAMPLER, STEPS, SEED = "dpm++2m", 20, 0


# --- the judges ------------------------------------------------------------------------------------
@functools.cache
def digits_judge():
    """images [N, 1, 8, 8] -> the digit that an RBF support-vector classifier (C = 10) trained on
    the 1437 training digits' pixels reads; deterministic, fitted in a tenth of a second."""
    from sklearn.svm import SVC

    train = load_data("digits", "train")
    clf = SVC(C=10.0).fit(train.images.flatten(1).numpy(), train.labels.numpy())
    return lambda images: torch.as_tensor(clf.predict(images.flatten(1).numpy()))


@functools.cache
def fashion_judge():
    """images [N, 1, 28, 28] -> the class the Fashion-MNIST feature classifier reads (trained and
    cached the first time, about a minute)."""
    from nanodiffusion.metrics.fid import classifier_input
    from nanodiffusion.training.classifier import classifier_features

    net = classifier_features("fashion-mnist", 28, 1, progress=False).net
    return lambda images: torch.cat([net(classifier_input(x)).argmax(1) for x in images.split(500)])


def class_samples(run, n: int, guidance: float) -> torch.Tensor:
    """n samples of a class-conditional run, image j of class j mod K, as `nanodiff eval` draws them."""
    cfg, denoiser = load_run(run)
    labels = torch.arange(n) % cfg.model.num_classes
    return draw(cfg, denoiser, n, cond=labels, sampler=SAMPLER, steps=STEPS, seed=SEED, guidance=guidance)


def class_accuracy(judge, images: torch.Tensor) -> float:
    """The fraction of images (image j asked for class j mod 10) that the judge reads as asked."""
    labels = torch.arange(len(images)) % 10
    return (judge(images) == labels).double().mean().item()


def adherence(run, n: int, held_out: int, guidance: float = 4.0) -> dict:
    """nanodiff eval-prompts' measurement: the shapes judge on n prompts and held_out held-out ones."""
    pipe = TextToImage.from_pretrained(run)

    def generate(captions: list[str]):
        images = pipe(
            captions, n=1, steps=STEPS, guidance=guidance, sampler=SAMPLER, seed=SEED, output="tensor"
        )
        return to_uint8(images)

    return evaluate_prompts(generate, n=n, n_held_out=held_out)


def upscale_scores(run, n: int) -> dict:
    """nanodiff upscale --demo's measurement: PSNR/SSIM of n test scenes upscaled, and bicubic's."""
    cfg, denoiser = load_run(run)
    return upscale_demo(cfg, denoiser, n, aug=0.0, sampler=SAMPLER, steps=STEPS, seed=SEED).scores


# --- the quick checks tests/test_pretrained.py repeats -------------------------------------------
def check_digits(run="digits") -> dict:
    """The digits judge on 100 samples at guidance 3 (a few seconds)."""
    return {"accuracy": class_accuracy(digits_judge(), class_samples(run, 100, 3.0))}


def check_fashion(run="fashion-mnist") -> dict:
    """The Fashion-MNIST judge on 100 samples at guidance 3."""
    return {"accuracy": class_accuracy(fashion_judge(), class_samples(run, 100, 3.0))}


def check_shapes(run="shapes") -> dict:
    """The shapes judge on the first 40 evaluation prompts (all kinds), no held-out ones."""
    result = adherence(run, 40, 0)
    return {"adherence": result["prompts"]["generated"]["overall"]["all"]}


def check_upscale(run="upscale") -> dict:
    """PSNR of the first 8 held-out scenes (rendered here: not the whole cached test split), and
    bicubic's."""
    cfg, denoiser = load_run(run)
    size = cfg.model.image_size
    scenes = np.stack([render_scene(SHAPES_TEST_SEED + i, size).image for i in range(8)])
    truth = torch.from_numpy(scenes).permute(0, 3, 1, 2).float() / 127.5 - 1
    low = downsample(truth, low_size(cfg))
    upscaled = upscale(cfg, denoiser, low, sampler=SAMPLER, steps=STEPS, seed=SEED)
    return {
        "psnr": psnr(upscaled, truth).mean().item(),
        "bicubic_psnr": psnr(upsample(low, size), truth).mean().item(),
    }


CHECKS = {
    "digits": check_digits,
    "fashion-mnist": check_fashion,
    "shapes": check_shapes,
    "upscale": check_upscale,
}


# --- the full measurements -------------------------------------------------------------------------
def measure_digits(run) -> dict:
    from nanodiffusion.training.classifier import evaluate_images

    judge, real = digits_judge(), load_data("digits", "test")
    samples = {w: class_samples(run, 500, w) for w in (1.0, 3.0)}
    fid = evaluate_images(samples[1.0], "digits", "classifier", n_ref=len(real.images), progress=False)
    return {
        "n": 500,
        "accuracy_w1": class_accuracy(judge, samples[1.0]),
        "accuracy_w3": class_accuracy(judge, samples[3.0]),
        "judge_on_real": (judge(real.images) == real.labels).double().mean().item(),
        "fid_classifier_w1": fid["fid"],
        "fid_floor": fid["floor_fid"],
        "fid_n_ref": len(real.images),
    }


def measure_fashion(run) -> dict:
    from nanodiffusion.training.classifier import evaluate_images

    judge, real = fashion_judge(), load_data("fashion-mnist", "test")
    samples = {w: class_samples(run, 1000, w) for w in (1.0, 3.0)}
    fid = evaluate_images(samples[1.0], "fashion-mnist", "inception", progress=False)
    return {
        "n": 1000,
        "accuracy_w1": class_accuracy(judge, samples[1.0]),
        "accuracy_w3": class_accuracy(judge, samples[3.0]),
        "judge_on_real": (judge(real.images) == real.labels).double().mean().item(),
        "fid_inception_w1": fid["fid"],
        "fid_floor": fid["floor_fid"],
        "kid_w1": fid["kid_mean"],
        "precision_w1": fid["precision"],
        "recall_w1": fid["recall"],
    }


def measure_shapes(run) -> dict:
    result = adherence(run, 200, 100)
    prompts, held = result["prompts"]["generated"], result["held-out"]["generated"]
    return {
        "n": 200,
        "n_held_out": 100,
        "guidance": 4.0,
        **{f"{kind}": prompts[kind]["all"] for kind in ("single", "relation", "count", "overall")},
        "held_out": held["overall"]["all"],
        "renders_overall": result["prompts"]["renders"]["overall"]["all"],
    }


def measure_upscale(run) -> dict:
    scores = upscale_scores(run, 500)
    return {"n": 500, **{f"{k}_{m}": v for k, s in scores.items() for m, v in s.items()}}


MEASURES = {
    "digits": measure_digits,
    "fashion-mnist": measure_fashion,
    "shapes": measure_shapes,
    "upscale": measure_upscale,
}


# --- the cards in docs/pretrained.md ---------------------------------------------------------------
def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


QUALITY = {  # name -> (what the card says, from its numbers)
    "digits": lambda q: (
        f"the digits judge reads {q['accuracy_w3']:.1%} of {q['n']} samples as the digit asked for at "
        f"guidance 3 ({q['accuracy_w1']:.1%} at guidance 1; the judge itself gets {q['judge_on_real']:.1%} "
        f"of the real test digits); FID {q['fid_classifier_w1']:.2f} with nanodiffusion's classifier "
        f"features at guidance 1, against {q['fid_n_ref']} test digits "
        f"(real-vs-real floor {q['fid_floor']:.2f})"
    ),
    "fashion-mnist": lambda q: (
        f"FID {q['fid_inception_w1']:.1f} (Inception-v3, N = {q['n']} samples at guidance 1 against "
        f"{q['n']} test images; real-vs-real floor {q['fid_floor']:.1f}), KID {q['kid_w1']:.4f}, "
        f"precision {q['precision_w1']:.2f}, recall {q['recall_w1']:.2f}; the classifier judge reads "
        f"{q['accuracy_w3']:.1%} of the samples as the class asked for at guidance 3 "
        f"({q['accuracy_w1']:.1%} at guidance 1; {q['judge_on_real']:.1%} of the real test images)"
    ),
    "shapes": lambda q: (
        f"prompt adherence (the shapes judge, guidance {q['guidance']:g}): {q['single']:.0%} of "
        f"single-object prompts, {q['relation']:.0%} of two objects in a stated relation, "
        f"{q['count']:.0%} of counts, {q['overall']:.0%} of all {q['n']} prompts, {q['held_out']:.0%} of "
        f"{q['n_held_out']} prompts naming held-out colour-shape pairs (the prompts' own renders: "
        f"{q['renders_overall']:.0%})"
    ),
    "upscale": lambda q: (
        f"PSNR {q['diffusion_psnr']:.2f} dB, SSIM {q['diffusion_ssim']:.4f} on {q['n']} held-out scenes "
        f"(bicubic: {q['bicubic_psnr']:.2f} dB, SSIM {q['bicubic_ssim']:.4f})"
    ),
}
MEASURED_BY = {  # name -> the commands that give the card's numbers
    "digits": ["python bench/pretrained_quality.py digits"],
    "fashion-mnist": [
        "nanodiff eval fashion-mnist --n 1000",
        "python bench/pretrained_quality.py fashion-mnist",
    ],
    "shapes": ["nanodiff eval-prompts shapes --n 200 --held-out 100"],
    "upscale": ["nanodiff upscale upscale --demo --n 500"],
}


DRAWS = {
    "digits": "8x8 digits of a class",
    "fashion-mnist": "28x28 clothes of a class",
    "shapes": "32x32 scenes from a prompt",
    "upscale": "64x64 scenes from 32x32 ones",
}
HEADLINE = {  # name -> the one number the summary table gives
    "digits": lambda q: f"digits judge {q['accuracy_w3']:.0%} right at guidance 3",
    "fashion-mnist": lambda q: f"FID {q['fid_inception_w1']:.1f} (Inception, N = {q['n']})",
    "shapes": lambda q: f"{q['single']:.0%} of single-object prompts followed",
    "upscale": lambda q: f"PSNR {q['diffusion_psnr']:.1f} dB (bicubic {q['bicubic_psnr']:.1f})",
}


def summary(cards: dict) -> str:
    """The table of every shipped model, with the total size."""
    rows = ["| name | draws | parameters | size | quality |", "| --- | --- | --- | --- | --- |"]
    for name in SHIPPED:
        card = cards.get(name, {})
        if "bytes" not in card:
            continue
        headline = HEADLINE[name](card["quality"]) if "quality" in card else "not measured yet"
        rows.append(
            f"| [`{name}`](#{name}) | {DRAWS[name]} | {card['parameters'] / 1e6:.2f}M "
            f"| {card['bytes'] / 2**20:.2f} MB | {headline} |"
        )
    total = sum(card["bytes"] for card in cards.values() if "bytes" in card)
    return "\n".join(rows) + f"\n\n{total / 2**20:.1f} MB in all ({total:,} bytes)."


def card_facts(name: str, card: dict) -> str:
    """The facts table of a model's card in docs/pretrained.md."""
    trained = f"`{card['command']}` ({card['steps']} steps)"
    time_line = (
        f"{minutes(card['wall_seconds'])} wall clock ({minutes(card['train_seconds'])} in training steps)"
    )
    if "autoencoder" in card:
        ae = card["autoencoder"]
        time_line += (
            f", after its autoencoder's {ae['steps']} steps in {minutes(ae['seconds'])} "
            f"(held-out PSNR {ae['psnr']:.1f} dB)"
        )
    time_line += "; 1 torch thread, beside another training, on a 2-core machine that also ran other work"
    params = f"{card['parameters'] / 1e6:.2f}M"
    if "autoencoder" in card:
        ae_params = parameters(shipped_folder(name) / "autoencoder")
        unet = card["parameters"] - ae_params
        params += f" (the UNet {unet / 1e6:.2f}M, its autoencoder {ae_params / 1e6:.2f}M)"
    rows = [
        ("trained by", trained),
        ("training time", time_line),
        ("parameters", params),
        ("size", f"{card['bytes'] / 2**20:.2f} MB ({card['dtype']} safetensors)"),
        ("quality", QUALITY[name](card["quality"]) if "quality" in card else "not measured yet"),
        ("measured by", " (FID), ".join(f"`{command}`" for command in MEASURED_BY[name])),
    ]
    return "| | |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"some of {', '.join(SHIPPED)} (default: all)")
    p.add_argument(
        "--runs", type=Path, help="measure RUNS/NAME (training runs) instead of the shipped models"
    )
    p.add_argument("--json", type=Path, help="with --runs: where the numbers go")
    p.add_argument(
        "--docs-only", action="store_true", help="measure nothing: rewrite the cards from cards.json"
    )
    args = p.parse_args()
    unknown = sorted(set(args.names) - set(SHIPPED))
    if unknown:
        p.error(f"not a shipped name: {', '.join(unknown)}; choose among {', '.join(SHIPPED)}")
    if args.runs and not args.json:
        p.error("--runs needs --json: the shipped cards hold the shipped weights' numbers only")
    cards = json.loads(CARDS.read_text()) if CARDS.is_file() else {}
    if args.docs_only:
        for name in args.names or SHIPPED:
            write_section(f"pretrained-{name}", card_facts(name, cards[name]), DOC)
        write_section("pretrained-summary", summary(cards), DOC)
        return
    measured = {}
    for name in args.names or SHIPPED:
        run = args.runs / name if args.runs else name
        start = time.perf_counter()
        measured[name] = {"quality": MEASURES[name](run), "check": CHECKS[name](run)}
        print(f"{name}: {json.dumps(measured[name])} ({time.perf_counter() - start:.0f} s)", flush=True)
        if args.runs:
            args.json.write_text(json.dumps(measured, indent=2) + "\n")
            continue
        cards[name] = {**cards.get(name, {}), **measured[name]}
        CARDS.write_text(json.dumps(cards, indent=2) + "\n")
        write_section(f"pretrained-{name}", card_facts(name, cards[name]), DOC)
        write_section("pretrained-summary", summary(cards), DOC)
        print(f"wrote {CARDS} and the {name} card in {DOC} ({shipped_folder(name)})", flush=True)


if __name__ == "__main__":
    main()
