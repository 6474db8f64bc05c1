"""The pure-NumPy core: layers, activations, losses, initializers, optimizers, training; no Hydra or MLflow."""

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.floating]
