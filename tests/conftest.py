"""Shared pytest set-up: no network, offline W&B, deterministic seeds, few threads; the shared MVTec tree."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("KDAD_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from fixtures import write_mvtec  # noqa: E402
from parity import one_cpu_thread  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One CPU thread for a whole test module, as the parity references were recorded (each parity test module has
    ``pytestmark = pytest.mark.usefixtures("one_thread")``); see ``parity.one_cpu_thread``."""
    with one_cpu_thread():
        yield


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec AD tree shared by every test that needs one: category bottle, 8 training images, 3 good and
    2 defect types x 3 test images. Read-only: tests that change a tree write their own."""
    root = tmp_path_factory.mktemp("mvtec")
    write_mvtec(root, ("bottle",), n_train=8, n_test_good=3, n_per_defect=3)
    return root
