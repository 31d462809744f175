"""Image metrics: CLIP score, CMMD and OCR, and the registry that names them."""
