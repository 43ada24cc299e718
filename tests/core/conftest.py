"""Session fixtures: the preprocessing pipeline run once on each real sample."""

from __future__ import annotations

import pytest
from core_helpers import load_benchmark_module

from napari_vertebra.core import PipelineResult, read_ct, read_labels, run_pipeline


@pytest.fixture(scope="session")
def lumbar(lumbar_ct_path, lumbar_labels_path):
    """(ct, labels) Volumes of the bundled lumbar sample."""
    ct = read_ct(lumbar_ct_path)
    return ct, read_labels(lumbar_labels_path, like=ct)


@pytest.fixture(scope="session")
def lumbar_result(lumbar) -> PipelineResult:
    """The pipeline with default parameters on the lumbar sample, labels carried along."""
    ct, labels = lumbar
    return run_pipeline(ct, labels=labels)


@pytest.fixture(scope="session")
def tptbox_result(tptbox_ct_path, tptbox_labels_path) -> PipelineResult:
    """The pipeline on the TPTBox crop (stored PIR), labels carried along."""
    ct = read_ct(tptbox_ct_path)
    return run_pipeline(ct, labels=read_labels(tptbox_labels_path, like=ct))


@pytest.fixture(scope="session")
def synthetic_ct():
    """``synthetic_ct(shape, spacing, hips=...)`` from the benchmark."""
    return load_benchmark_module().synthetic_ct
