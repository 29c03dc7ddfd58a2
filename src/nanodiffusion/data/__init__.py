"""data"""

from nanodiffusion.data import moving_mnist  # noqa: F401  (registers the moving-mnist data name)
