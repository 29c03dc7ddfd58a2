"""The judging half of bench/molecules.py (filled in while the trainings run)."""


def judge_run(run, n, quick, picture):
    raise NotImplementedError


def format_report(s, trained, judged) -> str:
    lines = [
        "| training | params | steps x batch | molecules/CPU s | loss, first 20 -> last 50 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in trained.items():
        if t:
            lines.append(
                f"| {name} | {t['params'] / 1e6:.2f}M | {t['steps']} x {t['batch']} | "
                f"{t['samples_per_cpu_s']:.1f} | {t['first_loss']:.3f} -> {t['final_loss']:.3f} |"
            )
    return "\n".join(lines)
