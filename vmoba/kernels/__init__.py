"""Kernels of VMoBA attention. Each module holds a PyTorch reference and a Triton version of one op."""
