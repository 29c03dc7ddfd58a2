"""Tasks as plug-ins: one module per task behind the protocol of ``tasks/base.py``, and their registry.

A run's ``data.task`` names its task; the trainer and the pipelines ask ``get_task(cfg.data.task)``
and never branch on the name. Adding a task is its own module and one ``register`` line here; a
task's presets (``presets``: name -> builder) join ``nanodiffusion.io.config``'s when it registers.
"""

from __future__ import annotations

from nanodiffusion.errors import NanodiffError
from nanodiffusion.io.config import register_preset
from nanodiffusion.io.validation import TASKS  # data.task -> the task; held where configs are checked
from nanodiffusion.tasks.base import Sampling, Task
from nanodiffusion.tasks.generate import Generate
from nanodiffusion.tasks.inpaint import Inpaint
from nanodiffusion.tasks.molecules import Molecules
from nanodiffusion.tasks.upscale import Upscale


def register(task: Task) -> Task:
    """Add a task (and its presets) under its name."""
    TASKS[task.name] = task
    for name, build in getattr(task, "presets", {}).items():
        register_preset(name, build)
    return task


def get_task(name: str) -> Task:
    """The task that data.task names."""
    if name not in TASKS:
        raise NanodiffError(f"unknown task {name!r}; choose one of {', '.join(map(repr, TASKS))}")
    return TASKS[name]


register(Generate())
register(Inpaint())
register(Upscale())
register(Molecules())

__all__ = ["TASKS", "Sampling", "Task", "get_task", "register"]
