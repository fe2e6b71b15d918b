"""SpectralWorld: procedural images with known frequency content, and the tiny CLIP trained on them."""
