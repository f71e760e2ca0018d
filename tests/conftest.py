"""Shared fixtures: tiny models, checkpoints in the exact formats the production loaders read, generated audio.

The expensive ones are session-scoped: built once per pytest(-xdist) worker, whichever test module asks first. Their
users only read them (every test that changes a file copies it into its own ``tmp_path`` first); keep it so.
Plain helpers live in ``helpers.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
import yaml

from s3prl_distill.audio_lists import write_length_csvs
from s3prl_distill.downstream_recipes.toy_emotion import write_emotion_config, write_emotion_corpus
from s3prl_distill.formats.s3prl_hubert import write_random_hubert

from helpers import TINY_STUDENT, write_audio_tree, write_s3prl_distiller_checkpoint


@pytest.fixture
def distiller_ckpt(tmp_path: Path) -> Path:
    return write_s3prl_distiller_checkpoint(tmp_path / "distiller.ckpt")


@pytest.fixture(scope="session")
def session_distiller_ckpt(tmp_path_factory) -> Path:
    return write_s3prl_distiller_checkpoint(tmp_path_factory.mktemp("ckpt") / "distiller.ckpt")


@pytest.fixture(scope="session")
def setup(tmp_path_factory) -> Dict[str, Path]:
    """A pretrain run's inputs: a tiny random hubert_local teacher, 16 generated utterances with their length CSVs,
    and a DistilHuBERT config (6 steps, log every step) over them."""
    folder = tmp_path_factory.mktemp("pretrain")
    teacher = write_random_hubert(folder / "teacher.ckpt", seed=0)
    audio = write_audio_tree(folder / "audio")
    write_length_csvs(audio, folder / "len_for_bucket", progress=False)
    config = {
        "runner": {"total_steps": 6, "log_step": 1, "save_step": 3, "keep_last": 5, "gradient_clipping": 5.0,
                   "seed": 7},
        "optimizer": {"lr": 2.0e-3},
        "scheduler": {"warmup_proportion": 0.0},
        "teacher": {"name": "hubert_local", "ckpt": str(teacher)},
        "student": TINY_STUDENT,
        "student_init": {"feature_extractor": True, "feature_projection": True, "pos_conv": True, "layers": 2},
        "method": {"name": "distilhubert"},
        "data": {"root": str(audio), "bucket_dir": str(folder / "len_for_bucket"), "sets": ["train-tiny"],
                 "train_batch_size": 4, "max_length": 12000, "num_workers": 0},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"folder": folder, "config": path, "teacher": teacher, "audio": audio}


@pytest.fixture(scope="session")
def emotion_setup(tmp_path_factory) -> Tuple[Path, Path]:
    """A tiny IEMOCAP-shaped corpus and s3prl's ER config over it: (corpus, config)."""
    folder = tmp_path_factory.mktemp("er")
    corpus = write_emotion_corpus(folder / "IEMOCAP")
    return corpus, write_emotion_config(folder / "config.yaml", corpus)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only cost time (much of it on a loaded machine). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
