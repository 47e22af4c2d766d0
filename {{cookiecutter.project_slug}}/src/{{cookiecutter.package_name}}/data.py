"""Dataset I/O: the demo dataset, the raw CSV format, train/test splits."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

LABEL_COLUMN = "label"


def write_demo_dataset(path: str | Path) -> Path:
    """Write scikit-learn's bundled handwritten digits (1797 8x8 images) as a CSV file.

    The data ships inside scikit-learn, so nothing is downloaded.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [f"pixel_{i}" for i in range(digits.data.shape[1])] + [LABEL_COLUMN]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row, label in zip(digits.data.astype(int), digits.target):
            writer.writerow([*row.tolist(), int(label)])
    return path


def load_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read features and labels from a CSV file whose last column is `label`."""
    path = Path(path)
    with path.open(newline="") as handle:
        header = next(csv.reader(handle))
    if not header or header[-1] != LABEL_COLUMN:
        raise ValueError(f"{path}: last column must be '{LABEL_COLUMN}', found {header[-1:]}")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    return table[:, :-1], table[:, -1].astype(np.int64)


def split(
    features: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train/test split; pixel values scaled to [0, 1]."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    scale = float(features.max()) or 1.0
    x_train, x_test, y_train, y_test = train_test_split(
        features / scale, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def save_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]], out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (features, labels) in splits.items():
        np.savez(out_dir / f"{name}.npz", features=features.astype(np.float32), labels=labels)


def load_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as archive:
        return archive["features"], archive["labels"]


def describe(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    """Sizes of the splits and the number of features and classes."""
    x_train, y_train = splits["train"]
    return {
        "n_train": int(len(y_train)),
        "n_test": int(len(splits["test"][1])),
        "n_features": int(x_train.shape[1]),
        "n_classes": int(len(np.unique(y_train))),
    }
