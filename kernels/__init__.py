"""fastdino.kernels: fused DINO loss and teacher EMA (Triton on CUDA, torch elsewhere), with readable
references in fastdino.kernels.reference."""
