"""Data readers (CIFAR pickles, PTB / WikiText files, built-in sets), augmentation, label noise, batching."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lot_rl.errors import LoTUserError
from lot_rl.runlog import write_atomically  # whole files: the two ranks of test_distributed write one folder
from lot_rl.supervised import data as D


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


def cifar_rows(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


def learnable_rows(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Images whose brightness gives their class (0, 4 or 9), plus noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 4, 9], n)
    data = np.clip(labels[:, None] * 25 + rng.integers(0, 30, (n, 3072)), 0, 255).astype(np.uint8)
    return data, [int(v) for v in labels]


def write_cifar10(root: Path, per_batch: int = 8, test: int = 16, seed: int = 0, learnable: bool = False) -> Path:
    """A CIFAR-10 python-pickle folder in the real format (bytes keys, (N, 3072) uint8 rows, label lists)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = (learnable_rows if learnable else cifar_rows)(test if name == "test_batch" else per_batch,
                                                                     seed + i)
        write_atomically(folder / name, pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                                  b"filenames": [b"x.png"] * len(labels)}))
    return root


def write_cifar100(root: Path, train: int = 12, test: int = 6) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for name, n in (("train", train), ("test", test)):
        write_atomically(folder / name, pickle.dumps({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                                  b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                                                  b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)]}))
    return root


def write_ptb(root: Path, name: str = "ptb") -> Path:
    """Small word-level files with PTB's conventions (leading space, <unk> already in the text)."""
    lines = {"train": [" the cat sat on the mat ", " the dog sat <unk> ", " a cat and a dog "] * 20,
             "valid": [" the cat sat ", " a bird sat "] * 5,
             "test": [" the dog and the cat "] * 6}
    root.mkdir(parents=True, exist_ok=True)
    pattern = D.TEXT_FILES[name]
    for split, text in lines.items():
        write_atomically(root / pattern.format(split), ("\n".join(text) + "\n").encode())
    return root


# ---------------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_reader_layout_and_labels(tmp_path):
    write_cifar10(tmp_path)
    data = D.load_cifar(tmp_path, "cifar10")
    assert data.train_images.shape == (40, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (16, 3, 32, 32) and data.num_classes == 10
    rows, labels = cifar_rows(8, 0)  # data_batch_1
    # Row layout: 1024 red, 1024 green, 1024 blue, each row-major.
    c, y, x = 2, 5, 17
    assert int(data.train_images[3, c, y, x]) == int(rows[3, c * 1024 + y * 32 + x])
    assert data.train_labels[:8].tolist() == labels
    rows5, labels5 = cifar_rows(8, 4)  # data_batch_5 comes last
    assert torch.equal(data.train_images[-8:].reshape(8, -1), torch.from_numpy(rows5))
    assert data.test_labels.tolist() == cifar_rows(16, 5)[1]


def test_cifar100_reader_uses_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    data = D.load_cifar(tmp_path, "cifar100")
    assert data.num_classes == 100 and data.train_images.shape == (12, 3, 32, 32)
    with open(tmp_path / "cifar-100-python" / "train", "rb") as f:
        assert data.train_labels.tolist() == pickle.load(f, encoding="bytes")[b"fine_labels"]


def test_cifar_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(LoTUserError, match=r"cifar-10-batches-py.*cifar-10-python.tar.gz.*--data-dir"):
        D.load_cifar(tmp_path, "cifar10")
    with pytest.raises(LoTUserError, match="cifar-100-python"):
        D.load_cifar(tmp_path, "cifar100")


def test_cifar_malformed_files(tmp_path):
    write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"\x00not a pickle")
    with pytest.raises(LoTUserError, match="data_batch_3 is not a readable CIFAR pickle"):
        D.load_cifar(tmp_path, "cifar10")
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0, 1, 2, 3]}, f)
    with pytest.raises(LoTUserError, match="malformed"):
        D.load_cifar(tmp_path, "cifar10")
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, f)
    with pytest.raises(LoTUserError, match=r"labels must be in \[0, 10\)"):
        D.load_cifar(tmp_path, "cifar10")
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump([1, 2, 3], f)
    with pytest.raises(LoTUserError, match="not a CIFAR batch"):
        D.load_cifar(tmp_path, "cifar10")


def test_digits_builtin_and_validation_split():
    data = D.load_digits(size=16)
    assert data.train_images.shape == (1797 - 360, 1, 16, 16) and data.test_images.shape == (360, 1, 16, 16)
    assert data.train_images.dtype == torch.uint8 and int(data.train_images.max()) > 200
    train_before = data.train_labels.clone()
    D.split_validation(data, 200, seed=3)
    assert len(data.val_labels) == 200 and len(data.train_labels) == 1797 - 560
    assert sorted((data.train_labels.tolist() + data.val_labels.tolist())) == sorted(train_before.tolist())
    with pytest.raises(LoTUserError, match="--val-size"):
        D.split_validation(D.load_digits(), 5000, seed=0)


# ---------------------------------------------------------------------------------------------------- augmentation


def test_augment_is_a_padded_crop_or_its_mirror():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    out = D.augment_batch(images, pad=2, flip=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets, flips = set(), set()
    for i in range(64):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (padded[i].flip(-1) if f else padded[i])[:, dy:dy + 8, dx:dx + 8])]
        assert matches, f"image {i} is not a crop of its padded (mirrored) self"
        offsets.add(matches[0][:2])
        flips.add(matches[0][2])
    assert flips == {False, True} and len(offsets) > 10  # random, per image


def test_augment_without_pad_or_flip_is_identity_and_flip_only_mirrors():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert torch.equal(D.augment_batch(images, pad=0, flip=False), images)
    out = D.augment_batch(images, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))


def test_normalize_per_channel():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = D.normalize_images(images, (0.5, 0.2), (0.5, 0.1))
    assert torch.allclose(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]), atol=1e-6)


@pytest.mark.parametrize("rate, noise_type, match", [
    (1.0, "symmetric", r"--label-noise must be in \[0, 1\), got 1.0"),
    (-0.1, "pair", r"--label-noise must be in \[0, 1\)"),
    (0.2, "asym", "unknown --noise-type 'asym'; choose one of symmetric, pair"),
    (0.5, "pair", "--label-noise 0.5 with --noise-type pair makes the flipped class the majority"),
])
def test_label_noise_options_are_checked_in_one_place(rate, noise_type, match):
    with pytest.raises(LoTUserError, match=match):
        D.validate_label_noise(rate, noise_type)
    D.validate_label_noise(0.49, "pair")  # the largest pair noise that keeps the true class the majority


def test_symmetric_label_noise_flips_exactly_the_rate_to_other_classes():
    labels = torch.arange(1000) % 10
    noisy = D.symmetric_label_noise(labels, 0.3, 10, seed=0)
    wrong = noisy != labels
    assert int(wrong.sum()) == 300
    assert set(noisy[wrong].tolist()) == set(range(10))
    assert torch.equal(D.symmetric_label_noise(labels, 0.0, 10, seed=0), labels)
    assert torch.equal(noisy, D.symmetric_label_noise(labels, 0.3, 10, seed=0))  # seeded
    with pytest.raises(LoTUserError, match="--label-noise"):
        D.symmetric_label_noise(labels, 1.0, 10, seed=0)


@pytest.mark.parametrize("noise_type", ["symmetric", "pair"])
def test_noise_flips_exact_fraction_and_never_touches_the_meta_split(noise_type):
    labels = np.repeat(np.arange(10), 50)
    train_idx, meta_idx = D.split_meta_set(labels, 100, 10, seed=0)
    noisy, corrupted = D.corrupt_labels(labels, 0.4, noise_type, 10, seed=1, protected=meta_idx)
    assert corrupted.sum() == round(0.4 * len(train_idx)) == 160
    assert not corrupted[meta_idx].any() and np.array_equal(noisy[meta_idx], labels[meta_idx])
    assert np.array_equal(corrupted, noisy != labels)
    if noise_type == "pair":
        assert np.array_equal(noisy[corrupted], (labels[corrupted] + 1) % 10)
    else:  # every other class is reached, none much more often than the others
        offsets = (noisy[corrupted] - labels[corrupted]) % 10
        assert set(offsets) == set(range(1, 10)) and np.bincount(offsets)[1:].max() < 40


def test_noise_is_seeded_and_zero_rate_is_clean():
    labels = np.arange(200) % 7
    a = D.corrupt_labels(labels, 0.25, "symmetric", 7, seed=3)
    b = D.corrupt_labels(torch.tensor(labels), 0.25, "symmetric", 7, seed=3)
    assert np.array_equal(a[0], b[0]) and a[1].sum() == 50
    noisy, corrupted = D.corrupt_labels(labels, 0.0, "pair", 7)
    assert np.array_equal(noisy, labels) and not corrupted.any()


def test_meta_split_is_class_balanced_and_disjoint():
    labels = np.array([0] * 30 + [1] * 30 + [2] * 4)
    train_idx, meta_idx = D.split_meta_set(labels, 21, 3, seed=0)
    assert len(meta_idx) == 21 and len(np.intersect1d(train_idx, meta_idx)) == 0
    assert len(train_idx) + len(meta_idx) == len(labels)
    counts = np.bincount(labels[meta_idx], minlength=3)
    assert counts[2] == 4 and counts[0] + counts[1] == 17 and abs(counts[0] - counts[1]) <= 3


def test_hold_out_meta_set_then_noise_only_the_rest():
    labels = torch.arange(200) % 10  # image i holds the value i: an id that survives the split
    images = D.ImageData("toy", torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1).expand(200, 1, 2, 2).clone(),
                       labels.clone(), torch.zeros(0, 1, 2, 2, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                       10, (0.5,), (0.2,))
    meta_x, meta_y, corrupted = D.hold_out_meta_set(images, 50, 0.4, "pair", seed=0)
    assert len(meta_y) == 50 and np.bincount(meta_y.numpy(), minlength=10).tolist() == [5] * 10
    meta_ids = set(meta_x[:, 0, 0, 0].tolist())
    train_ids = images.train_images[:, 0, 0, 0].long()
    assert len(train_ids) == 150 and meta_ids.isdisjoint(train_ids.tolist())
    assert torch.equal(meta_y, labels[sorted(meta_ids)])  # the meta labels are the clean ones
    assert int(corrupted.sum()) == 60
    original = labels[train_ids]
    assert torch.equal(corrupted, images.train_labels != original)
    assert torch.equal(images.train_labels[corrupted], (original[corrupted] + 1) % 10)


def test_meta_split_and_noise_refuse_impossible_requests():
    with pytest.raises(LoTUserError, match="--label-noise 0.5 with --noise-type pair"):
        D.corrupt_labels(np.arange(10) % 2, 0.5, "pair", 2)
    with pytest.raises(LoTUserError, match="--meta-size must be between 1 and"):
        D.split_meta_set(np.arange(10) % 2, 10, 2)


def test_shuffled_batches_cover_each_pass_and_resume_exactly():
    stream = D.ShuffledBatches(10, 3, torch.Generator().manual_seed(0))
    first_pass = torch.cat([stream.next() for _ in range(3)])
    assert stream.batches_per_pass == 3 and len(set(first_pass.tolist())) == 9
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in stream.state_dict().items()}
    expected = [stream.next() for _ in range(5)]
    resumed = D.ShuffledBatches(10, 3, torch.Generator().manual_seed(99))
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [resumed.next() for _ in range(5)]))
    with pytest.raises(LoTUserError, match="--batch-size 20 is larger"):
        D.ShuffledBatches(10, 20, torch.Generator())


# ---------------------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("name", ["ptb", "wikitext103"])
def test_word_corpus_reader(tmp_path, name):
    write_ptb(tmp_path, name)
    text = D.load_word_corpus(tmp_path, name)
    words = text.vocab.words
    decoded = [words[i] for i in text.train[:9].tolist()]
    assert decoded == ["the", "cat", "sat", "on", "the", "mat", "<eos>", "the", "dog"]
    assert text.train.numel() == 20 * (7 + 5 + 6)
    assert words[0] == "the"  # most frequent first
    # "bird" is not in train: it becomes <unk> (already a PTB word here)
    valid = [words[i] for i in text.valid[:8].tolist()]
    assert valid == ["the", "cat", "sat", "<eos>", "a", "<unk>", "sat", "<eos>"]


def test_unseen_words_get_an_unk_id_when_train_has_none():
    vocab = D.Vocabulary.from_tokens(["a", "b", "a", D.EOS])
    ids = vocab.encode(["a", "zzz"])
    assert vocab.words[int(ids[1])] == D.UNK and len(vocab) == 4


def test_word_corpus_errors(tmp_path):
    with pytest.raises(LoTUserError, match=r"missing ptb.train.txt, ptb.valid.txt, ptb.test.txt in .*--data-dir"):
        D.load_word_corpus(tmp_path, "ptb")
    write_ptb(tmp_path)
    (tmp_path / "ptb.valid.txt").write_text("\n\n")
    with pytest.raises(LoTUserError, match="ptb.valid.txt holds no words"):
        D.load_word_corpus(tmp_path, "ptb")
    (tmp_path / "ptb.valid.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(LoTUserError, match="not UTF-8"):
        D.load_word_corpus(tmp_path, "ptb")


def test_pydoc_corpus_builtin():
    text = D.load_pydoc_corpus()
    assert text.train.numel() > 50_000 and text.valid.numel() > 1_000 and text.test.numel() > 1_000
    assert D.EOS in text.vocab.index and D.UNK in text.vocab.index
    assert int(text.train.max()) < len(text.vocab)
    assert "def" in text.vocab.index and "python" in text.vocab.index


def test_batchify_and_bptt_windows():
    ids = torch.arange(23)
    streams = D.batchify(ids, 4)
    assert streams.shape == (4, 5) and streams[1].tolist() == [5, 6, 7, 8, 9]
    windows = D.bptt_windows(streams, 3)
    assert windows == [(0, 3), (3, 1)]
    x, y = D.window(streams, *windows[0])
    assert torch.equal(y, x + 1) and x.shape == (4, 3)
    x, y = D.window(streams, *windows[1])
    assert x[:, 0].tolist() == [3, 8, 13, 18] and y[:, 0].tolist() == [4, 9, 14, 19]
    with pytest.raises(LoTUserError, match="batch size"):
        D.batchify(torch.arange(5), 4)
