"""fgkd: fine-grained visual classification by knowledge distillation."""

__version__ = "0.1.0"
