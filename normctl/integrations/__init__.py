"""Optional integrations, imported only when used: ``normctl.integrations.hf`` (Hugging Face
Transformers), ``normctl.integrations.lightning`` (PyTorch Lightning) and
``normctl.integrations.timm`` (timm's optimizer factory)."""
