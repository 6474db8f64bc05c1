"""How long OpenBLAS's idle threads spin; imported by ``nnexp/__init__.py`` before anything imports NumPy.

After each matrix product OpenBLAS's threads spin for 2^28 processor cycles (about 0.1 s) before they sleep, so
between the products of a batch they hold the cores that nnexp's element-wise threads (:mod:`nnexp.core.parallel`)
need for the optimizer's update. Sleeping after 2^4 cycles cut the optimizer's share of a 784-512-10 MNIST epoch
(Adam, batch 128, 2 cores) from 0.67 s to 0.38 s and the epoch's CPU time by a quarter, the products no slower.
OpenBLAS reads the variable once, when NumPy loads it, so this applies when nnexp is imported before NumPy, as
``python -m nnexp`` always is; a value the user set wins.
"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
