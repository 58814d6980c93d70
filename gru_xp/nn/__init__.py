"""The math floor: recurrent cells, their fast twins, heads, losses, optimizers and the model objects.

Every module here sees only arrays of an array namespace `xp` (resolved once by gru_xp.backend at the public entry
point) and never imports numpy, pandas or matplotlib; `fast/_cuda.py` is the one module that imports cupy.
"""
