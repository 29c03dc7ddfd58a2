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
    app        the local web app (`nanodiff app`): a plain page and a small API over the library
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
# Old modules whose names were split further: the old path holds these modules' names too
# (after the main one's: the old evaluate.evaluate_images is training.classifier's, which trains
# the classifier features when asked for them, as it did).
SPLIT = {
    "control": ("training.controlnet", "metrics.image"),
    "train": ("training.loop", "training.autoencoder"),
    "superres": ("metrics.image",),
    "editing": ("metrics.image",),
    "evaluate": ("training.classifier",),
    "pipelines": ("inference.sampling", "inference.runs"),
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
        for extra in SPLIT.get(module.__name__[len(__name__) + 1 :], ()):  # names that moved on again
            extra_module = importlib.import_module(f"{__name__}.{extra}")
            for k, v in vars(extra_module).items():  # its own definitions; what it imported only if new
                own = getattr(v, "__module__", None) == extra_module.__name__
                if not k.startswith("_") and (own or k not in module.__dict__):
                    module.__dict__[k] = v
        module.__doc__ = real.__doc__


sys.meta_path.append(_OldPath())


# Every task, and its presets in io.config.PRESETS, registered whichever module is imported first.
from nanodiffusion import tasks as _tasks  # noqa: E402, F401
