"""Text datasets: :class:`TextDataset` and the SMS Spam Collection (:func:`sms_spam`).

Everything is local: nothing here downloads. :func:`sms_spam` reads the original UCI file
``SMSSpamCollection`` (one ``label<TAB>text`` line per message) from a directory you point it
at, or from ``$ADVEX_DATASETS/sms-spam-collection``, or from
``../shared/datasets/sms-spam-collection`` next to the repository.

Reference: T. A. Almeida, J. M. Gómez Hidalgo, A. Yamakami, "Contributions to the Study of SMS
Spam Filtering: New Collection and Results", DocEng 2011 (UCI dataset 228).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .core import DatasetError

__all__ = [
    "TextDataset",
    "SMS_SPAM_CLASSES",
    "SMS_SPAM_FILE",
    "read_labelled_tsv",
    "sms_spam",
    "sms_spam_root",
    "stratified_split",
]

#: the class names of the SMS spam data, in label order (0 = ham, 1 = spam)
SMS_SPAM_CLASSES = ("ham", "spam")
#: the file name inside the UCI archive
SMS_SPAM_FILE = "SMSSpamCollection"


class TextDataset:
    """An in-memory labelled text dataset.

    Args:
        texts: the messages, a sequence of ``str`` (copied into a tuple: the dataset never
            shares a mutable list with the caller).
        y: integer labels ``(N,)`` in ``[0, len(class_names))``; stored as an ``int64`` tensor.
        class_names: one name per class, in label order (``("ham", "spam")``).
        name: a short name for reports (``"sms-spam-test"``).

    ``ds[i]`` is ``(text, label)``; ``ds.texts`` the tuple of messages, ``ds.y`` the labels.

    >>> ds = TextDataset(["win cash now", "see you at 5"], [1, 0], class_names=("ham", "spam"))
    >>> ds.class_names[int(ds.y[0])]
    'spam'
    """

    def __init__(
        self,
        texts: Sequence[str],
        y,
        *,
        class_names: Sequence[str],
        name: str = "text",
    ) -> None:
        if isinstance(texts, str | bytes):
            raise TypeError("TextDataset: texts must be a sequence of str, not one string")
        texts = tuple(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(
                    f"TextDataset: texts[{i}] is {type(t).__name__}, expected str "
                    "(decode bytes first, e.g. b.decode('utf-8'))"
                )
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ValueError(
                f"TextDataset: class_names must hold >= 2 distinct names, got {class_names}"
            )
        y_t = torch.as_tensor(y)
        if y_t.is_floating_point() and not bool((y_t == y_t.round()).all()):
            raise ValueError("TextDataset: y must hold integer class labels")
        y_t = y_t.to(torch.int64).reshape(-1) if y_t.dim() <= 1 else y_t
        if y_t.dim() != 1:
            raise ValueError(f"TextDataset: y must be 1-D (N,), got shape {tuple(y_t.shape)}")
        if y_t.shape[0] != len(texts):
            raise ValueError(
                f"TextDataset: {len(texts)} texts but {y_t.shape[0]} labels (lengths differ)"
            )
        if len(texts) and (int(y_t.min()) < 0 or int(y_t.max()) >= len(class_names)):
            raise ValueError(
                f"TextDataset: labels must lie in [0, {len(class_names)}) for classes "
                f"{class_names}; got range [{int(y_t.min())}, {int(y_t.max())}]"
            )
        self.texts: tuple[str, ...] = texts
        self.y: torch.Tensor = y_t.clone()
        self.class_names: tuple[str, ...] = class_names
        self.name = str(name)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], int(self.y[i])

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{c}={int((self.y == k).sum())}" for k, c in enumerate(self.class_names)
        )
        return f"TextDataset({self.name!r}, n={len(self)}, {counts})"

    def label_of(self, name: str) -> int:
        """The integer label of class ``name`` (``ValueError`` naming the classes if unknown)."""
        if name not in self.class_names:
            raise ValueError(f"unknown class {name!r}; classes: {list(self.class_names)}")
        return self.class_names.index(name)

    def subset(self, index, name: str | None = None) -> TextDataset:
        """The examples at ``index`` (a sequence of ints, a bool mask or an index tensor)."""
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            if idx.shape[0] != len(self):
                raise ValueError(f"subset: mask has {idx.shape[0]} entries for {len(self)}")
            idx = idx.nonzero().squeeze(1)
        idx = idx.to(torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"subset: index out of range for a dataset of {len(self)}")
        return TextDataset(
            [self.texts[int(i)] for i in idx],
            self.y[idx],
            class_names=self.class_names,
            name=name or self.name,
        )

    def of_class(self, name: str) -> TextDataset:
        """The examples of class ``name`` (``ds.of_class("spam")``)."""
        k = self.label_of(name)
        return self.subset(self.y == k, name=f"{self.name}-{name}")

    def head(self, n: int) -> TextDataset:
        """The first ``n`` examples."""
        return self.subset(torch.arange(min(int(n), len(self))))


# --------------------------------------------------------------------------------------------
# Reading the TSV
# --------------------------------------------------------------------------------------------


def read_labelled_tsv(
    path: str | os.PathLike,
    class_names: Sequence[str] = SMS_SPAM_CLASSES,
    *,
    encoding: str = "utf-8",
) -> tuple[list[str], list[int]]:
    """Read a ``label<TAB>text`` file: ``(texts, labels)`` with labels as indices of
    ``class_names``.

    Tolerated: a UTF-8 byte-order mark, CRLF or CR line ends, blank lines, surrounding
    whitespace and upper-case in the label, further TABs inside the text (kept). Refused with
    a :class:`~advex.data.DatasetError` naming the file and line: bytes that are not valid
    ``encoding`` (pass ``encoding="latin-1"`` for such a file), a line without a TAB, a label
    that is not one of ``class_names``, a file with no message.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise DatasetError(f"{p} is a directory; pass the {SMS_SPAM_FILE} file or use sms_spam()")
    if not p.is_file():
        raise FileNotFoundError(f"text dataset file not found: {p}")
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\x00" in raw[:4096]:
        raise DatasetError(f"{p}: not a text file (NUL bytes; UTF-16 or binary?)")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{p}: line {line}: bytes {raw[e.start : e.end]!r} are not valid {encoding}; "
            "pass encoding='latin-1' (or the file's real encoding)"
        ) from e
    except LookupError as e:
        raise ValueError(f"unknown encoding {encoding!r}") from e
    names = {c.lower(): k for k, c in enumerate(class_names)}
    texts: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label, tab, message = line.partition("\t")
        if not tab:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise DatasetError(
                f"{p}: line {lineno}: expected 'label<TAB>text', found no TAB in {shown!r}"
            )
        key = label.strip().lower()
        if key not in names:
            raise DatasetError(
                f"{p}: line {lineno}: label {label.strip()!r} is not one of {list(class_names)}"
            )
        texts.append(message.strip())
        labels.append(names[key])
    if not texts:
        raise DatasetError(f"{p}: no messages (empty file?)")
    return texts, labels


def stratified_split(
    y: torch.Tensor, test_size: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_index, test_index)``: per class, a seeded permutation; the first
    ``round(test_size * n_class)`` go to test. Both indices sorted (the file order is kept)."""
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must lie in (0, 1), got {test_size!r}")
    gen = torch.Generator().manual_seed(int(seed))
    train, test = [], []
    for k in torch.unique(y).tolist():
        members = (y == k).nonzero().squeeze(1)
        perm = members[torch.randperm(members.numel(), generator=gen)]
        n_test = int(round(float(test_size) * members.numel()))
        test.append(perm[:n_test])
        train.append(perm[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def sms_spam_root(root: str | os.PathLike | None = None) -> Path:
    """The directory (or file) the SMS spam data is read from: ``root`` when given, else
    ``$ADVEX_DATASETS/sms-spam-collection``, else ``../shared/datasets/sms-spam-collection``
    beside the repository (or the working directory). ``FileNotFoundError`` lists the places
    looked at."""
    if root is not None:
        return Path(root).expanduser()
    tried = []
    env = os.environ.get("ADVEX_DATASETS")
    if env:
        tried.append(Path(env).expanduser() / "sms-spam-collection")
    repo = Path(__file__).resolve().parents[3]
    tried.append(repo.parent / "shared" / "datasets" / "sms-spam-collection")
    tried.append(Path.cwd().parent / "shared" / "datasets" / "sms-spam-collection")
    for cand in tried:
        if (cand / SMS_SPAM_FILE).is_file():
            return cand
    raise FileNotFoundError(
        "SMS Spam Collection not found; pass root= (the folder holding SMSSpamCollection) or "
        "set $ADVEX_DATASETS; looked in: " + ", ".join(str(t) for t in tried)
    )


def sms_spam(
    root: str | os.PathLike | None = None,
    split: str = "test",
    seed: int = 0,
    *,
    test_size: float = 0.2,
    deduplicate: bool = True,
    encoding: str = "utf-8",
) -> TextDataset:
    """The SMS Spam Collection (5,574 messages; classes ``("ham", "spam")``, spam = 1).

    Args:
        root: the folder holding ``SMSSpamCollection`` or the file itself (default: see
            :func:`sms_spam_root`).
        split: ``"train"``, ``"test"`` or ``"all"``.
        seed: seed of the stratified split (the same seed gives the same split).
        test_size: share of each class held out for ``"test"``.
        deduplicate: drop repeated messages (exact same text) before splitting, keeping the
            first; the corpus holds 403 repeats, which would otherwise leak from train to test.
        encoding: the file's encoding (the original is UTF-8).

    >>> test = sms_spam(split="test")          # 1,034 messages, 131 spam (deduplicated)
    >>> spam = test.of_class("spam")
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    base = sms_spam_root(root)
    path = base / SMS_SPAM_FILE if base.is_dir() else base
    if not path.is_file():
        raise FileNotFoundError(
            f"no {SMS_SPAM_FILE} in {base}: the SMS Spam Collection folder holds the original "
            "UCI file SMSSpamCollection"
        )
    texts, labels = read_labelled_tsv(path, SMS_SPAM_CLASSES, encoding=encoding)
    if deduplicate:
        seen: set[str] = set()
        keep = []
        for i, t in enumerate(texts):
            if t not in seen:
                seen.add(t)
                keep.append(i)
        texts = [texts[i] for i in keep]
        labels = [labels[i] for i in keep]
    y = torch.tensor(labels, dtype=torch.int64)
    if split == "all":
        return TextDataset(texts, y, class_names=SMS_SPAM_CLASSES, name="sms-spam")
    train_idx, test_idx = stratified_split(y, test_size, seed)
    idx = train_idx if split == "train" else test_idx
    return TextDataset(
        [texts[int(i)] for i in idx],
        y[idx],
        class_names=SMS_SPAM_CLASSES,
        name=f"sms-spam-{split}",
    )
