"""Suite-wide settings: one thread per library.

The tests use small tensors, for which thread start-up costs more than it saves; on a shared
2-core machine multi-threaded BLAS made some tests ten times slower.
"""

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import torch

torch.set_num_threads(1)

try:  # numpy/scipy BLAS pools that were started before the variables above were read
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
    pass
