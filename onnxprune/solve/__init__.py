"""The math: least-squares problems on d x d statistics, the greedy selection and the refit (NumPy or CuPy)."""
