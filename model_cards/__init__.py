"""Card templates (Jinja2 markdown) for models and datasets published by hf-backdoor-guard."""
