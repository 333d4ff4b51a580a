import os

# Two pytest workers share two cores: one thread each. No progress bars, no windows.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("EBM_NB_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
