"""Model-card templates (Jinja, rendered by huggingface_hub.ModelCard), installed as ``hf_lwmm.model_cards``."""
