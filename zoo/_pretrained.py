"""Metadata of one published weight (timm's ``PretrainedCfg``, for segmentation)."""
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CAMVID_CLASSES = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car',
                  'Pedestrian', 'Bicyclist')
# the colours SegNet's own scripts use
CAMVID_PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
                  (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
                  (0, 128, 192))


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a weight lives, what it was trained on and what it scored.

    ``architecture.tag`` is its name (``topformer_base_imachsr.camvid``); ``hf_hub_id`` and
    ``file`` locate it on the Hugging Face Hub, ``sha256`` is checked on every load.
    """
    architecture: str
    tag: str
    hf_hub_id: Optional[str] = None
    file: str = 'model.safetensors'
    sha256: Optional[str] = None
    num_classes: int = 150
    label_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int, int] = (3, 512, 512)
    ignore_index: int = 255
    dataset: str = ''
    split: str = ''
    license: str = 'apache-2.0'
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f'{self.architecture}.{self.tag}'

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def camvid_cfg(architecture: str, sha256: str, metrics: dict[str, float]) -> PretrainedCfg:
    """A weight trained on CamVid train (367 frames, 360x480), scored on val: ``architecture.camvid``."""
    return PretrainedCfg(architecture=architecture, tag='camvid', sha256=sha256, num_classes=len(CAMVID_CLASSES),
                         label_names=CAMVID_CLASSES, palette=CAMVID_PALETTE, input_size=(3, 360, 480),
                         dataset='camvid', split='val', metrics=metrics)
