"""Primitive differentiable ops (Functions with hand-written backward) and fused kernels."""
