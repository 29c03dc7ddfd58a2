"""Sound and music runs on the command line: `generate` and `sample` write WAV files and a
spectrogram picture (MIDI, the synthesiser's WAVs and a piano-roll picture for chorales); generate
takes `--given WAV --gap A:B` to fill seconds A to B of a clip (inpainting; `--gap 0.5:1` continues its
first half); `eval-audio` judges a run by listening (speech) or by music statistics (chorales)."""

from __future__ import annotations

from pathlib import Path

import torch

from nanodiffusion.cli import common
from nanodiffusion.errors import NanodiffError


def add_sound_options(g) -> None:
    """generate's flags for sound runs."""
    g.add_argument("--given", metavar="WAV", help="a sound run: a clip to edit, kept exactly outside --gap")
    g.add_argument(
        "--gap",
        metavar="A:B",
        help="with --given: the seconds to draw anew (inpainting; 0.5:1 continues the first half)",
    )


def word_label(cfg, prompt: str) -> int | None:
    """A class-conditional sound run's class for the prompt (the word), None for no prompt."""
    from nanodiffusion.data.datasets import builtin_class_names

    if not prompt:
        return None
    k = cfg.model.num_classes
    if not k:
        raise NanodiffError('this run is unconditional: give an empty prompt "" or use nanodiff sample')
    names = cfg.data.class_names.split("|") if cfg.data.class_names else builtin_class_names(cfg.data.name)
    names = names if names and len(names) == k else [str(i) for i in range(k)]
    folded = [name.lower() for name in names]
    if prompt.strip().lower() not in folded:
        raise NanodiffError(f"{prompt!r} is not a word this run knows: one of {', '.join(names)}")
    return folded.index(prompt.strip().lower())


def given_clip(args, cfg) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """--given WAV and --gap A:B as (the clip [1, T], known [T]), checked against the run."""
    from nanodiffusion.data.audio import fit_length, read_wav
    from nanodiffusion.inference.audio import SOUND, clip_samples, run_modality

    if args.gap and not args.given:
        raise NanodiffError("--gap needs --given WAV")
    if not args.given:
        return None, None
    if run_modality(cfg) not in SOUND:
        raise NanodiffError("--given takes a sound run's clip; piano-roll runs are drawn whole")
    if not args.gap:
        raise NanodiffError("--given needs --gap A:B, the seconds to draw anew")
    wave, rate = read_wav(args.given)
    if rate != cfg.data.sample_rate:
        raise NanodiffError(
            f"{args.given} is {rate} Hz; this run was trained on {cfg.data.sample_rate} Hz clips"
        )
    T = clip_samples(cfg)
    try:
        a, b = (float(x) for x in args.gap.split(":"))
    except ValueError:
        raise NanodiffError(f"--gap must look like A:B in seconds (0.4:0.6), got {args.gap!r}") from None
    seconds = T / rate
    if not 0 <= a < b <= seconds or (a, b) == (0, seconds):
        raise NanodiffError(
            f"--gap {args.gap} must lie within the clip's 0 to {seconds:g} s and not be all of it"
        )
    lo, hi = round(a * rate), round(b * rate)
    if hi <= lo or (lo, hi) == (0, T):
        raise NanodiffError(f"--gap {args.gap} holds no whole sample, or all of them: widen or narrow it")
    if len(wave) > T:
        raise NanodiffError(f"{args.given} is {len(wave) / rate:g} s; this run's clips are {T / rate:g} s")
    known = torch.ones(T, dtype=torch.bool)
    known[lo:hi] = False
    return torch.from_numpy(fit_length(wave, T))[None], known  # a shorter clip: silence after it


def cmd_generate_sound(args) -> int:
    """generate on a sound or roll run: the prompt is the word (a class run) or empty."""
    if args.init or args.control or args.control_from or args.frames or args.first_frame or args.upscale:
        raise NanodiffError("sound takes --given WAV --gap A:B, not --init, a control, frames or --upscale")
    cfg, denoiser, _, encoder = common.open_run(args, videos=True)
    name = f"{common.slug(args.prompt or 'any')}-seed{args.seed}"
    if args.given:  # an edit never writes over the clip it edits
        name += f"-{common.slug(Path(args.given).stem)}-gap{common.slug(args.gap or '')}"
    out = common.check_out(Path(args.out) if args.out else common.run_output(args.run, "generated", name))
    given, known = given_clip(args, cfg)
    if given is not None and Path(args.given).resolve().parent == out.resolve():
        raise NanodiffError(f"--given {args.given} lies in the output folder {out}: give another --out")
    from nanodiffusion.inference.audio import draw_sound, sound_files
    from nanodiffusion.inference.pipelines import conditioning

    if encoder is not None:  # a text run: the prompt through its text encoder
        cond, w, uncond = conditioning(
            cfg, encoder, args.n, args.prompt, args.negative, guidance=args.guidance
        )
    else:  # a word run: the prompt is a class name
        label = word_label(cfg, args.prompt)
        guidance = args.guidance if label is not None else None
        cond, w, uncond = conditioning(cfg, None, args.n, class_label=label, guidance=guidance)
    sound = draw_sound(
        cfg, denoiser, args.n, cond=cond, guidance=w, uncond=uncond, given=given, known=known,
        sampler=args.sampler, steps=args.steps, seed=args.seed, progress=True,
    )  # fmt: skip
    files = sound_files(cfg, sound, out)
    what = "chorales" if cfg.data.modality == "roll" else "clips"
    edit = f", {args.given} kept outside {args.gap} s" if given is not None else ""
    print(
        f"{args.n} {what} ({args.sampler}, {args.steps} steps, guidance {w:g}, seed {args.seed}{edit}): "
        f"{files['first'].parent}/ ({files['first'].name}, ...), {files['picture']}"
    )
    return 0


# --- eval-audio ----------------------------------------------------------------------------------
def add_eval_audio(sub) -> None:
    ev = sub.add_parser(
        "eval-audio", help="a speech run heard by the word judge, or a chorales run's music statistics"
    )
    common.add_run(ev)
    common.add_n(ev, 300, "clips (chorales) judged per guidance scale (default 300: 10 of each word)")
    ev.add_argument(
        "--guidance", type=common.guidance, nargs="+", default=[3.0], help="one or more scales (default 3)"
    )
    common.add_drawing(ev, steps=20, out="RUN/eval-audio/<sampler>-<steps>-n<n>-seed<s>.json")
    ev.set_defaults(func=cmd_eval_audio)


def cmd_eval_audio(args) -> int:
    from nanodiffusion.training.audio_eval import evaluate_audio, format_audio_report

    out = common.judged_out(args, "eval-audio")
    result = evaluate_audio(
        args.run,
        n=args.n,
        steps=args.steps,
        sampler=args.sampler,
        guidance=tuple(args.guidance),
        seed=args.seed,
        weights=args.weights,
        device=args.device,
    )
    samples = common.write_judged(out, result)
    print(format_audio_report({Path(args.run).name: result}))
    from nanodiffusion.io.viz import save_grid

    modality = "roll" if result["modality"] == "roll" else "audio"
    picture = save_grid(samples[:16], out.with_name(out.stem + "-samples.png"), 4, modality=modality)
    print(f"written: {out}, {picture} (the first {min(16, len(samples))})")
    return 0


def add_commands(sub) -> None:
    add_eval_audio(sub)
