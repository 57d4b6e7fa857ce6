"""Datasets: on-disk layouts, label decoding, bad-data errors, check_dataset, embedded sample."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from zoo.data import (SAMPLE_ROOT, CamVid, Cityscapes, DatasetError, FolderDataset, SynthiaSF,
                      check_dataset, create_dataset)
from zoo.data.synthia import SYNTHIA_SF_LABELS

H, W = 24, 32
REAL_CAMVID = Path(__file__).parents[1].parent / 'shared' / 'datasets' / 'camvid'


def write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    return path


def random_rgb(seed: int = 0, size: tuple[int, int] = (H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def camvid_label(seed: int = 0) -> np.ndarray:
    label = np.random.default_rng(seed).integers(0, 11, (H, W), dtype=np.uint8)
    label[0, :4] = 11  # void
    return label


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    """SegNet layout: train/ trainannot/ val/ valannot/, frames named like the real ones."""
    root = tmp_path / 'camvid'
    for split, names in {'train': ['0001TP_006690', '0001TP_006720', 'Seq05VD_f00000'],
                         'val': ['0016E5_07959', '0016E5_07961']}.items():
        for i, name in enumerate(names):
            suffix = '.jpg' if name.startswith('Seq05') else '.png'  # mixed image formats are fine
            write_image(root / split / f'{name}{suffix}', random_rgb(i))
            write_image(root / f'{split}annot' / f'{name}.png', camvid_label(i))
    return root


def cityscapes_name(city: str, seq: int, frame: int) -> str:
    return f'{city}_{seq:06d}_{frame:06d}'


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png."""
    root = tmp_path / 'cityscapes'
    for split, city in (('train', 'aachen'), ('val', 'frankfurt')):
        for frame in (19, 20):
            name = cityscapes_name(city, 0, frame)
            write_image(root / 'leftImg8bit' / split / city / f'{name}_leftImg8bit.png', random_rgb(frame))
            label = np.zeros((H, W), np.uint8)
            label[:, 8:16], label[:, 16:24], label[:, 24:] = 7, 26, 33  # road, car, bicycle
            write_image(root / 'gtFine' / split / city / f'{name}_gtFine_labelIds.png', label)
    return root


def synthia_label(ids: list[int]) -> np.ndarray:
    """Colour-coded label with vertical stripes of the given published SYNTHIA-SF ids."""
    colours = np.array([c for _, c in SYNTHIA_SF_LABELS], np.uint8)
    stripes = np.repeat(np.array(ids), W // len(ids))
    return np.ascontiguousarray(np.broadcast_to(colours[stripes], (H, W, 3)))


@pytest.fixture
def synthia_root(tmp_path: Path) -> Path:
    """SEQ*/RGBLeft/*.png + SEQ*/GTLeft/*.png colour labels, two sequences."""
    root = tmp_path / 'synthia'
    for seq in ('SEQS-01-DAWN', 'SEQS-02-NIGHT'):
        for frame in range(2):
            write_image(root / seq / 'RGBLeft' / f'{frame:07d}.png', random_rgb(frame))
            write_image(root / seq / 'GTLeft' / f'{frame:07d}.png', synthia_label([0, 1, 14, 22]))
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    root = tmp_path / 'folder'
    for i in range(3):
        write_image(root / 'images' / f'img{i}.jpg', random_rgb(i))
        mask = np.full((H, W), i, np.uint8)
        mask[0] = 255
        write_image(root / 'masks' / f'img{i}.png', mask)
    return root


# ---------------------------------------------------------------- loading and label decoding

def test_camvid_pairs_and_void(camvid_root):
    ds = CamVid(camvid_root, 'train')
    assert len(ds) == 3 and ds.num_classes == 11 and ds.ignore_index == 255
    assert ds.classes[0] == 'Sky' and ds.classes[-1] == 'Bicyclist' and len(ds.palette) == 11
    image, label = ds[0]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert label.shape == (H, W) and label.dtype == np.int64
    raw = camvid_label(0)
    assert (label[raw == 11] == 255).all() and (label[raw != 11] == raw[raw != 11]).all()
    assert 'pairs=3' in repr(ds)
    text = ds.describe()
    assert '3 image/label pairs' in text and str(camvid_root / 'trainannot') in text


def test_camvid_image_read_as_rgb(camvid_root):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200  # pure red survives only if BGR is converted back
    write_image(camvid_root / 'val' / '0016E5_07959.png', rgb)
    image, _ = CamVid(camvid_root, 'val')[0]
    assert (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()


def test_cityscapes_label_ids_to_train_ids(cityscapes_root):
    ds = Cityscapes(cityscapes_root, 'train')
    assert len(ds) == 2 and ds.num_classes == 19 and ds.label_type == 'labelIds'
    _, label = ds[0]
    assert (label[:, :8] == 255).all()   # labelId 0, unlabeled
    assert (label[:, 8:16] == 0).all()   # 7 road
    assert (label[:, 16:24] == 13).all()  # 26 car
    assert (label[:, 24:] == 18).all()   # 33 bicycle
    assert Cityscapes.available_splits(cityscapes_root) == ['train', 'val']


def test_cityscapes_prefers_train_id_files(cityscapes_root):
    city = cityscapes_root / 'gtFine' / 'train' / 'aachen'
    for frame in (19, 20):
        write_image(city / f'{cityscapes_name("aachen", 0, frame)}_gtFine_labelTrainIds.png',
                    np.full((H, W), 5, np.uint8))
    ds = Cityscapes(cityscapes_root, 'train')
    assert ds.label_type == 'labelTrainIds' and (ds[0][1] == 5).all()
    forced = Cityscapes(cityscapes_root, 'train', label_type='labelIds')
    assert (forced[0][1][:, 8:16] == 0).all()
    with pytest.raises(ValueError, match='label_type'):
        Cityscapes(cityscapes_root, 'train', label_type='colour')


def test_synthia_colour_decoding(synthia_root):
    ds = SynthiaSF(synthia_root, 'all')
    assert len(ds) == 4 and ds.num_classes == 22 and ds.classes[0] == 'road'
    _, label = ds[0]
    # published ids void, road, car, road works -> ignore, 0, 13, 21
    assert label[0, ::8].tolist() == [255, 0, 13, 21]


def test_synthia_sequence_split(synthia_root):
    assert len(SynthiaSF(synthia_root, 'val')) == 2
    assert all('SEQS-02' in str(p) for p, _ in SynthiaSF(synthia_root, 'val').pairs)
    assert all('SEQS-01' in str(p) for p, _ in SynthiaSF(synthia_root, 'train').pairs)
    flipped = SynthiaSF(synthia_root, 'val', val_sequences=['SEQS-01-DAWN'])
    assert all('SEQS-01' in str(p) for p, _ in flipped.pairs)
    with pytest.raises(ValueError, match='SEQS-09'):
        SynthiaSF(synthia_root, 'val', val_sequences=['SEQS-09'])


def test_synthia_unknown_colour_names_file_and_colour(synthia_root):
    bad = synthia_label([1, 2])
    bad[3, 3] = (1, 2, 3)
    path = write_image(synthia_root / 'SEQS-01-DAWN' / 'GTLeft' / '0000000.png', bad)
    with pytest.raises(DatasetError, match=r'\(1, 2, 3\)') as err:
        SynthiaSF(synthia_root, 'all')[0]
    assert str(path) in str(err.value)


def test_folder_dataset(folder_root):
    ds = FolderDataset(folder_root, classes=['bg', 'cat', 'dog'])
    assert len(ds) == 3 and ds.num_classes == 3 and len(ds.palette) == 3
    _, label = ds[2]
    assert set(np.unique(label)) == {2, 255}
    ds = create_dataset('folder', folder_root, 'all', classes=['a', 'b', 'c'], palette=[[1, 2, 3]] * 3)
    assert ds.palette[0] == (1, 2, 3)
    with pytest.raises(ValueError, match='palette'):
        FolderDataset(folder_root, classes=['a', 'b', 'c'], palette=[(0, 0, 0)])


def test_folder_dataset_split_subfolders(folder_root):
    (folder_root / 'val').mkdir()
    for sub in ('images', 'masks'):
        (folder_root / sub).rename(folder_root / 'val' / sub)
    assert FolderDataset.available_splits(folder_root) == ['val']
    assert len(FolderDataset(folder_root, 'val', classes=['a', 'b', 'c'])) == 3


def test_create_dataset_unknown_name_lists_valid(camvid_root):
    assert isinstance(create_dataset('CamVid', camvid_root, 'val'), CamVid)
    with pytest.raises(ValueError, match='camvid, cityscapes, synthia, folder'):
        create_dataset('ade20k', camvid_root, 'val')


# ---------------------------------------------------------------- bad data

def test_image_without_label(camvid_root):
    (camvid_root / 'trainannot' / '0001TP_006720.png').unlink()
    with pytest.raises(DatasetError, match='without a label') as err:
        CamVid(camvid_root, 'train')
    assert str(camvid_root / 'train' / '0001TP_006720.png') in str(err.value)
    assert len(CamVid(camvid_root, 'train', skip_unpaired=True)) == 2


def test_label_without_image(cityscapes_root):
    image = cityscapes_root / 'leftImg8bit' / 'val' / 'frankfurt' / 'frankfurt_000000_000020_leftImg8bit.png'
    image.unlink()
    with pytest.raises(DatasetError, match='without an image') as err:
        Cityscapes(cityscapes_root, 'val')
    assert 'frankfurt_000000_000020_gtFine_labelIds.png' in str(err.value)


def test_ambiguous_stems(camvid_root):
    write_image(camvid_root / 'val' / '0016E5_07959.jpg', random_rgb())
    with pytest.raises(DatasetError, match='ambiguous') as err:
        CamVid(camvid_root, 'val')
    assert '0016E5_07959.jpg' in str(err.value)


def test_size_mismatch(camvid_root):
    label = write_image(camvid_root / 'valannot' / '0016E5_07961.png', np.zeros((H, W + 1), np.uint8))
    ds = CamVid(camvid_root, 'val')  # per-file checks wait for loading
    with pytest.raises(DatasetError, match='size mismatch') as err:
        ds[1]
    assert str(label) in str(err.value) and '0016E5_07961.png' in str(err.value)


def test_label_values_out_of_range(camvid_root):
    bad = camvid_label()
    bad[5, 5] = 12
    label = write_image(camvid_root / 'valannot' / '0016E5_07959.png', bad)
    with pytest.raises(DatasetError, match=r'values \[12\]') as err:
        CamVid(camvid_root, 'val')[0]
    assert str(label) in str(err.value)


def test_folder_mask_must_be_single_channel(folder_root):
    mask = write_image(folder_root / 'masks' / 'img0.png', random_rgb())
    with pytest.raises(DatasetError, match='channels') as err:
        FolderDataset(folder_root, classes=['a', 'b', 'c'])[0]
    assert str(mask) in str(err.value)


@pytest.mark.parametrize('which', ['image', 'label'])
def test_corrupt_file(camvid_root, which):
    path = camvid_root / ('val' if which == 'image' else 'valannot') / '0016E5_07959.png'
    path.write_bytes(b'\x89PNG\r\n\x1a\n this is not a png')
    with pytest.raises(DatasetError, match=f'cannot read {which}') as err:
        CamVid(camvid_root, 'val')[0]
    assert str(path) in str(err.value)


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match='does not exist') as err:
        CamVid(tmp_path / 'nowhere', 'train')
    assert str(tmp_path / 'nowhere') in str(err.value) and 'trainannot' in str(err.value)


@pytest.mark.parametrize('cls, kwargs', [(CamVid, {}), (Cityscapes, {}), (SynthiaSF, {}),
                                         (FolderDataset, {'classes': ['a']})])
def test_empty_root_names_expected_layout(tmp_path, cls, kwargs):
    with pytest.raises(DatasetError, match='Expected layout') as err:
        cls(tmp_path, 'train' if cls in (CamVid, Cityscapes) else 'all', **kwargs)
    assert str(tmp_path) in str(err.value) and cls.layout in str(err.value)


def test_missing_split_lists_present_ones(camvid_root):
    with pytest.raises(DatasetError, match=r"split 'test' not found.*\['train', 'val'\]"):
        CamVid(camvid_root, 'test')


def test_empty_split_folder(camvid_root):
    (camvid_root / 'test').mkdir()
    with pytest.raises(DatasetError, match="no image/label pairs for split 'test'"):
        CamVid(camvid_root, 'test')


# ---------------------------------------------------------------- check_dataset

def test_check_dataset_clean(camvid_root):
    report = check_dataset('camvid', camvid_root)
    assert report.ok and report.problems == []
    assert report.pairs == {'train': 3, 'val': 2}
    assert sum(report.frequencies.values()) == pytest.approx(1.0)
    assert report.ignored['train'] == 3 * 4
    text = report.format()
    assert 'OK' in text and 'Bicyclist' in text and 'train' in text
    assert check_dataset('camvid', camvid_root, splits='val').pairs == {'val': 2}


def test_check_dataset_reports_planted_problems(camvid_root):
    bad = camvid_label()
    bad[0, 0] = 40
    bad_label = write_image(camvid_root / 'trainannot' / '0001TP_006690.png', bad)
    orphan = camvid_root / 'val' / '0016E5_07961.png'
    (camvid_root / 'valannot' / '0016E5_07961.png').unlink()
    report = check_dataset('camvid', camvid_root)
    assert not report.ok and len(report.problems) == 2
    assert report.pairs == {'train': 3, 'val': 1}
    assert any(str(bad_label) in p and '[40]' in p for p in report.problems)
    assert any(str(orphan) in p for p in report.problems)
    assert str(bad_label) in report.format()


def test_check_dataset_wrong_root(tmp_path):
    report = check_dataset('synthia', tmp_path / 'missing')
    assert not report.ok and str(tmp_path / 'missing') in report.problems[0]
    report = check_dataset('cityscapes', tmp_path)
    assert not report.ok and 'leftImg8bit' in report.problems[0]


def test_check_dataset_other_families(cityscapes_root, synthia_root, folder_root):
    assert check_dataset('cityscapes', cityscapes_root).pairs == {'train': 2, 'val': 2}
    assert check_dataset('synthia', synthia_root).pairs == {'all': 4}
    report = check_dataset('folder', folder_root, classes=['a', 'b', 'c'])
    assert report.ok and report.frequencies == pytest.approx({'a': 1 / 3, 'b': 1 / 3, 'c': 1 / 3})


# ---------------------------------------------------------------- embedded sample and real data

def test_embedded_sample():
    ds = CamVid(SAMPLE_ROOT, 'val')
    assert len(ds) == 10
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (360, 480, 3) and label.shape == (360, 480)
        assert set(np.unique(label).tolist()) <= set(range(11)) | {255}
    assert (SAMPLE_ROOT.parent / 'README.md').is_file()
    assert sum(p.stat().st_size for p in SAMPLE_ROOT.rglob('*')) < 5 * 2**20
    with pytest.raises(DatasetError, match=r"\['val'\]"):
        CamVid(SAMPLE_ROOT, 'train')


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason=f'real CamVid not at {REAL_CAMVID}')
def test_real_camvid():
    assert len(CamVid(REAL_CAMVID, 'train')) == 367
    assert len(CamVid(REAL_CAMVID, 'val')) == 101
    values = set()
    labels = sorted(REAL_CAMVID.glob('trainannot/*.png')) + sorted(REAL_CAMVID.glob('valannot/*.png'))
    assert len(labels) == 468
    for path in labels:
        values |= set(np.unique(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)).tolist())
    assert values <= set(range(12))  # 11 is void, mapped to 255 on load
    report = check_dataset('camvid', REAL_CAMVID)
    assert report.ok, report.format()
    assert report.pairs == {'train': 367, 'val': 101}


def test_cli_data_check(camvid_root, folder_root, capsys):
    from zoo.cli import main
    assert main(['data', 'check', '--data', 'camvid', '--root', str(camvid_root)]) == 0
    assert 'OK' in capsys.readouterr().out
    assert main(['data', 'check', '--data', 'folder', '--root', str(folder_root), '--classes', 'a,b,c']) == 0
    (camvid_root / 'trainannot' / 'extra.png').write_bytes(b'')
    assert main(['data', 'check', '--data', 'camvid', '--root', str(camvid_root)]) == 1
    assert 'extra.png' in capsys.readouterr().out
