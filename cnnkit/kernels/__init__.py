"""Every Numba-compiled function of cnnkit lives in this package, and nowhere else.

Kernels are pure: they take numpy arrays and scalars, write into preallocated outputs and
never see a layer object. Layers call them; tests compare them against tests/reference.py.
"""
