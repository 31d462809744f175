"""The model: LoRA adapters (add, save, load, export), caption encoding, sampling, weight folders."""
