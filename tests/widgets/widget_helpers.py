"""Constants shared by the widget tests (imported as ``from widget_helpers import ...``,
so that no test module imports another)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The shipped smoke configuration.
SMOKE = ROOT / "napari_vertebra" / "configs" / "smoke.yaml"
#: A very small model and run: seconds per epoch on a laptop CPU.
TINY = {
    "min_size": 128,
    "max_size": 128,
    "batch_size": 2,
    "max_steps_per_epoch": 1,
    "val_max_images": 1,
    "workers": 0,
    "warmup_iters": 0,
    "lr_schedule": "constant",
}


def sample_mip_viewer(make_napari_viewer, sample_result, project):
    """(viewer, Preprocess, Annotate): the lumbar sample opened, its MIP shown as
    "Preprocess CT" leaves it, and 'Annotate vertebrae' docked on it with ``project``."""
    from napari_vertebra.widgets._sample import CT_NAME
    from napari_vertebra.widgets.annotate import AnnotateWidget
    from napari_vertebra.widgets.preprocess import PreprocessWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre = PreprocessWidget(viewer)
    pre.show_result(sample_result, ct_layer=viewer.layers[CT_NAME])
    ann = AnnotateWidget(viewer, project_dir=str(project))
    viewer.window.add_dock_widget(ann, name="Annotate vertebrae")
    ann.mip_layer.value = pre.mip_layer()
    return viewer, pre, ann


def write_checkpoint(path: Path) -> Path:
    """A small checkpoint file that reads as one of ours (no weights: what Load run's
    check needs, not a model to predict with)."""
    from napari_vertebra.model.predict_jobs import avoid_triton

    avoid_triton()  # as the widgets do: Triton after napari's OpenGL crashes (llvmpipe)
    from napari_vertebra.model.build import save_checkpoint

    return save_checkpoint(path, model={}, config={}, epoch=0)
