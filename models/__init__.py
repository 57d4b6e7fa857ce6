"""The architectures; importing a family registers its entrypoints."""
from .deeplabv3plus import DeepLabV3PlusDecoder
from .timm_backbone import TimmBackbone

__all__ = ['DeepLabV3PlusDecoder', 'TimmBackbone']
