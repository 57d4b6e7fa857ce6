"""The architectures; importing a family registers its entrypoints."""
from .deeplabv3plus import DeepLabV3PlusDecoder
from .timm_backbone import TimmBackbone
from . import seaformer  # noqa: F401
from . import topformer  # noqa: F401

__all__ = ['DeepLabV3PlusDecoder', 'TimmBackbone']
