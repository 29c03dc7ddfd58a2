"""nanodiffusion: diffusion models as the field teaches them.

The package is layered (docs/architecture.md); each layer imports only those before it:

    core       sigma-space math on tensors of any shape: schedules, denoisers, losses, samplers,
               guidance, editing hooks
    nets       nn.Modules only: the UNet, the autoencoder, ControlNet
    data       datasets, the shapes world, text encoders
    io         configs and presets, run folders and checkpoints, images and pictures
    metrics    FID/KID/PR, image metrics, the judges
    tasks      one module per task behind one protocol, and their registry
    inference  the sampling core and the pipelines on top
    training   one loop, and the trainers that call it with their step
    cli        the `nanodiff` command line, one module per command group
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Where modules lived before the layers (0.1.0): the old paths still import, for one release,
# with a DeprecationWarning that names the new one.
MOVED = {
    "schedules": "core.schedules",
    "denoisers": "core.denoisers",
    "losses": "core.losses",
    "samplers": "core.samplers",
    "guidance": "core.guidance",
    "editing": "core.editing",
    "gmm": "core.gmm",
    "control": "nets.controlnet",
    "shapes": "data.shapes",
    "text": "data.text",
    "config": "io.config",
    "checkpoint": "io.checkpoint",
    "viz": "io.viz",
    "train": "training.diffusion",
    "pipelines": "inference.pipelines",
    "stable_diffusion": "inference.stable_diffusion",
    "diffusers_models": "inference.diffusers_models",
    "superres": "tasks.upscale",
    "evaluate": "metrics.fid",
    "bench_samplers": "metrics.sampler_error",  # its docs-writing part is bench/samplers.py
}


class _OldPath(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import nanodiffusion.pipelines` gives a module holding nanodiffusion.inference.pipelines' names."""

    def find_spec(self, fullname, path, target=None):
        prefix = __name__ + "."
        if fullname.startswith(prefix) and fullname[len(prefix) :] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        new = f"{__name__}.{MOVED[module.__name__[len(__name__) + 1 :]]}"
        warnings.warn(
            f"{module.__name__} moved to {new}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        real = importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
        module.__doc__ = real.__doc__


sys.meta_path.append(_OldPath())


# Every task, and its presets in io.config.PRESETS, registered whichever module is imported first.
from nanodiffusion import tasks as _tasks  # noqa: E402, F401
