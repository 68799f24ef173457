"""acm_tools: the PyTorch reference for acm-serve.

- `acm`: the Adaptive Computation Module and its choice rules (docs/compute-budget.md).
- `vit`: a torchvision-style ViT whose modules may be ACMs.
- `modelio`: `save_model` / `load_model` for the model format (docs/model-format.md).
- `golden`: writes the fixture models and their expected outputs for the Swift tests.
"""
