"""Optional integrations, imported only when used: ``normctl.integrations.hf`` (Hugging Face
Transformers) and ``normctl.integrations.lightning`` (PyTorch Lightning)."""
