"""`python -m diffusionvl` runs the command line, as the `diffusionvl` script does."""

from .cli import main

main()
