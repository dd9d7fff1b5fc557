"""impactx: explanation-guided learning on PyTorch Lightning.

Sub-packages: ``impactx.data`` (LightningDataModules), ``impactx.models`` (backbones split into a
feature extractor M and a head), ``impactx.attribution`` (batched attribution methods),
``impactx.metrics`` (torchmetrics for explanation quality), ``impactx.modules`` (LightningModules).
"""

__version__ = "0.1.0"
