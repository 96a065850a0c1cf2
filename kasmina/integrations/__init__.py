"""Kasmina inside the tools people already run: PyTorch Lightning, the Hugging Face
``Trainer``, Prometheus. Each is an optional extra (``pip install kasmina[lightning]``,
``[hf]``, ``[prometheus]``) imported only by its own module, so the core stays light."""
