"""phreg-bench: a dense-prediction benchmark for ViT denoising methods, with PH-Reg as reference."""

__version__ = "0.1.0"
