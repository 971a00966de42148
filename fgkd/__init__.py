"""fgkd: fine-grained visual classification by knowledge distillation."""

# 0.2.0: model.pt records its earlier networks and history (fgkd verify); cached results of 0.1 are not reused.
__version__ = "0.2.0"
