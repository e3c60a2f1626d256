import torch

from rgd_bench.worlds import digits


def test_data_scale_and_shape():
    images, labels = digits.load_digits_data()
    assert images.shape == (1797, 1, 8, 8)
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0
    assert set(labels.tolist()) == set(range(10))
    pixels = digits.to_pixels(images)
    assert pixels.shape == (1797, 64) and pixels.min() == 0 and pixels.max() == 16


def test_balanced_retain_set_has_equal_counts_and_no_forget_class():
    _, labels = digits.load_digits_data()
    index = digits.balanced_retain_indices(labels, forget_class=3, per_class=20, seed=0)
    counts = torch.bincount(labels[index], minlength=10)
    assert counts[3] == 0
    assert all(int(counts[c]) == 20 for c in range(10) if c != 3)
    assert len(set(index.tolist())) == 180
    assert torch.equal(index, digits.balanced_retain_indices(labels, 3, 20, seed=0))
    assert not torch.equal(index, digits.balanced_retain_indices(labels, 3, 20, seed=1))


def test_narrow_retain_set_has_same_size_from_two_near_classes():
    _, labels = digits.load_digits_data()
    index = digits.narrow_retain_indices(labels, forget_class=0, per_class=20, seed=0)
    assert index.numel() == 180
    assert set(labels[index].tolist()) == set(digits.NEAREST_CLASSES[0])


def test_nearest_classes_table_matches_the_data():
    images, labels = digits.load_digits_data()
    assert digits.nearest_classes(images, labels) == digits.NEAREST_CLASSES


def test_committed_base_model_loads():
    unet = digits.load_base_model()
    assert not any(p.requires_grad for p in unet.parameters())
    assert sum(p.numel() for p in unet.parameters()) > 100_000
