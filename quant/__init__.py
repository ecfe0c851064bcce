"""Mixed-quantization GGUF for diffusion transformers: the method, without ComfyUI."""
