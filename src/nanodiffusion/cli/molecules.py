"""Molecule runs on the command line: `generate` and `sample` write an SDF file of all molecules,
one XYZ file each and a grid of 2-D depictions; generate's prompt names a property bin ("high",
"low", "middle", its index or its name), `--atoms N` fixes the size, `--scaffold` keeps a
scaffold's atoms and generates the rest; `eval-molecules` judges a run by chemistry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nanodiffusion.cli import common
from nanodiffusion.errors import NanodiffError

WORDS = {"low": 0, "lowest": 0, "high": -1, "highest": -1, "middle": 1, "mid": 1, "medium": 1}


def add_molecule_options(g) -> None:
    """generate's flags for molecule runs."""
    g.add_argument(
        "--atoms", type=common.up_to(10_000), help="a molecule run: every molecule has this many atoms"
    )
    g.add_argument(
        "--scaffold",
        metavar="SMILES|FILE",
        help="a molecule run: keep these atoms (an .sdf or .xyz with 3-D coordinates, kept where they "
        "are; or a SMILES, given ETKDG coordinates and kept without its hydrogens) and generate the rest",
    )


def property_label(cfg, prompt: str | None) -> int | None:
    """A property run's bin for the prompt: low / middle / high, an index, or a bin's name."""
    from nanodiffusion.inference.molecules import property_bins

    if not prompt:
        return None
    bins = property_bins(cfg)
    if not bins:
        raise NanodiffError(
            "this molecule run is not property-conditional: give no prompt (train with data.property "
            "to condition)"
        )
    text = prompt.strip().lower()
    if text in WORDS and (WORDS[text] != 1 or len(bins) == 3):
        return WORDS[text] % len(bins)
    if text.isdigit() and int(text) < len(bins):
        return int(text)
    names = [b.lower() for b in bins]
    if text in names:
        return names.index(text)
    raise NanodiffError(f"{prompt!r} is not a bin of this run: low, high, 0-{len(bins) - 1} or one of {bins}")


def read_scaffold(spec: str, hydrogens: bool):
    """--scaffold as (elements, positions): a 3-D file's atoms as they are, or a SMILES's heavy atoms
    on an ETKDG conformer."""
    from nanodiffusion.data.molecules import embed
    from nanodiffusion.io.molecules import read_molecules, read_smiles

    if Path(spec).suffix.lower() in (".sdf", ".xyz", ".smi", ".txt") or Path(spec).exists():
        if Path(spec).suffix.lower() in (".smi", ".txt"):
            spec = read_smiles(spec)[0][0]
        else:
            records = read_molecules(spec)
            if len(records) != 1:
                raise NanodiffError(f"{spec} holds {len(records)} molecules; a scaffold is one")
            els, pos, _ = records[0]
            if not hydrogens:  # a heavy-atom run: the scaffold's heavy atoms
                keep = [i for i, e in enumerate(els) if e != "H"]
                els, pos = [els[i] for i in keep], pos[keep]
            if not np.isfinite(pos).all():
                raise NanodiffError(f"{spec}: a coordinate is not a finite number")
            return list(els), pos
    try:
        smiles = read_smiles([spec])[0][0]
    except NanodiffError:
        raise NanodiffError(
            f"the scaffold {spec!r} is neither a SMILES that parses nor a .sdf or .xyz file"
        ) from None
    made = embed(smiles, hydrogens=False)
    if made is None:
        raise NanodiffError(f"RDKit could not give the scaffold {spec!r} 3-D coordinates")
    return made


def sample_molecules(args) -> int:
    """sample on a molecule run: --class is a property bin, one --guidance scale."""
    if args.init is not None or len(args.guidance or [1.0]) > 1:
        raise NanodiffError("a molecule run's samples take neither --init nor several --guidance scales")
    args.guidance = (args.guidance or [None])[0]
    if args.class_label is None and args.guidance not in (None, 1.0):
        raise NanodiffError("--guidance needs --class, a property bin to guide towards")
    args.atoms = args.scaffold = None
    return cmd_generate_molecules(args, None, args.class_label)


def cmd_generate_molecules(args, prompt: str | None, label: int | None = None) -> int:
    """generate (and sample) on a molecule run."""
    flags = ("init", "control", "control_from", "frames", "first_frame", "upscale")
    if any(getattr(args, f, None) for f in flags):
        raise NanodiffError(
            "molecules take --atoms and --scaffold, not --init, a control, frames or --upscale"
        )
    if getattr(args, "given", None) or getattr(args, "gap", None):
        raise NanodiffError("--given and --gap edit sound; molecules take --scaffold")
    cfg, denoiser, _, _ = common.open_run(args, videos=True)
    if label is None:
        label = property_label(cfg, prompt)
    elif not 0 <= label < max(cfg.model.num_classes, 1) or not cfg.model.num_classes:
        raise NanodiffError(
            f"--class {label}: this run's property bins are 0 to {cfg.model.num_classes - 1}"
            if cfg.model.num_classes
            else "--class needs a property-conditional molecule run"
        )
    tag = "any" if label is None else common.slug(prompt or str(label))
    name = f"{tag}-seed{args.seed}" + (f"-{common.slug(Path(args.scaffold).stem)}" if args.scaffold else "")
    out = common.check_out(Path(args.out) if args.out else common.run_output(args.run, "generated", name))
    from nanodiffusion.inference.molecules import draw_molecules, molecule_files
    from nanodiffusion.metrics.molecules import judge_molecules

    scaffold = read_scaffold(args.scaffold, cfg.data.hydrogens) if args.scaffold else None
    guidance = args.guidance if label is not None else None  # generate's default scale is a prompt's
    molecules = draw_molecules(
        cfg, denoiser, args.n, label=label, guidance=guidance, atoms=getattr(args, "atoms", None),
        scaffold=scaffold, sampler=args.sampler, steps=args.steps, seed=args.seed, progress=True,
    )  # fmt: skip
    files = molecule_files(out, molecules)
    j = judge_molecules(molecules)
    kept = f", the scaffold's {len(scaffold[0])} atoms kept" if scaffold else ""
    print(
        f"{args.n} molecules ({args.sampler}, {args.steps} steps, seed {args.seed}{kept}): "
        f"{100 * j['validity']:.0f}% valid, {100 * j['atom_stability']:.0f}% of atoms stable; "
        f"{files['sdf']}, {files['xyz']}/, {files['grid']}"
    )
    return 0


# --- eval-molecules --------------------------------------------------------------------------------
def add_eval_molecules(sub) -> None:
    ev = sub.add_parser("eval-molecules", help="a molecule run's samples judged by chemistry")
    common.add_run(ev)
    common.add_n(ev, 500, "molecules judged per setting (default 500)")
    ev.add_argument(
        "--guidance", type=common.guidance, default=2.0, help="a property run's guidance towards a bin"
    )
    ev.add_argument("--no-baselines", action="store_true", help="skip the random-atoms and training-set rows")
    common.add_drawing(ev, steps=100, out="RUN/eval-molecules/<sampler>-<steps>-n<n>-seed<s>.json")
    ev.set_defaults(func=cmd_eval_molecules, sampler="ddpm")  # the paper's sampler: ancestral steps


def cmd_eval_molecules(args) -> int:
    from nanodiffusion.inference.molecules import draws_molecules
    from nanodiffusion.io.molecules import draw_grid
    from nanodiffusion.training.molecule_eval import evaluate_molecules, format_molecule_report, molecule_json

    if not draws_molecules(common.run_config(args.run)):
        raise NanodiffError(f"{args.run} does not draw molecules: eval-molecules judges a molecule run")
    out = common.judged_out(args, "eval-molecules")
    result = evaluate_molecules(
        args.run, n=args.n, steps=(args.steps,), sampler=args.sampler, seed=args.seed,
        guidance=args.guidance, with_baselines=not args.no_baselines, weights=args.weights,
        device=args.device,
    )  # fmt: skip
    molecules = result["molecules"]
    common.write_judged(out, {**molecule_json(result), "samples": None})
    print(format_molecule_report(result))
    picture = draw_grid(molecules[:20], out.with_name(out.stem + "-molecules.png"))
    print(f"written: {out}, {picture} (the first {min(20, len(molecules))})")
    return 0


def add_commands(sub) -> None:
    add_eval_molecules(sub)
