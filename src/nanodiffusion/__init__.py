"""nanodiffusion: diffusion models as the field teaches them."""
