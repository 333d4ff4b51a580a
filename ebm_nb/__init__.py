__version__ = "0.1.0"

# The one hand-written file of the package (nbdev keeps it and sets the version line). Each method module
# registers its presets when imported; importing them all here makes the preset dict complete after
# `import ebm_nb` (or any `from ebm_nb.x import ...`), whatever the user imported first.
from . import cd, diffusion, dual_mcmc, gcd, improved_cd  # noqa: E402, F401
