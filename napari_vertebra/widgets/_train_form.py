"""The Train widget's form: dataset source, configuration file and the fields over it.

:class:`TrainForm` holds the magicgui fields (the widget keeps them as its own
attributes too, so tests set ``widget.epochs.value``) and turns them into the next run's
:class:`~napari_vertebra.model.config.TrainConfig`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FileEdit, FloatSpinBox, SpinBox

from napari_vertebra.core.labels import CLASS_SETS
from napari_vertebra.model.run import default_run_dir

if TYPE_CHECKING:
    from napari_vertebra.model.config import TrainConfig

__all__ = [
    "BACKBONES",
    "DEVICES",
    "SOURCE_COCO",
    "SOURCE_PROJECT",
    "TrainForm",
    "default_config_path",
    "shipped_config_paths",
]

SOURCE_COCO = "COCO dataset folder"
SOURCE_PROJECT = "the open annotation project"
OWN_FILE = "(a YAML file)"
BACKBONES = ("resnet101", "resnet50", "resnet34", "resnet18")
DEVICES = ("auto", "cpu", "cuda")


def shipped_config_paths() -> dict[str, Path]:
    """{name: YAML path} of the configurations shipped in the package."""
    from napari_vertebra.model.config import shipped_configs

    try:
        return shipped_configs()
    except OSError:
        return {}


def default_config_path() -> Path | None:
    """The shipped ``paper`` configuration (package data, also in an installed wheel), or
    None (then the model defaults, which are the paper's setup, apply)."""
    return shipped_config_paths().get("paper")


class TrainForm:
    """The fields of a run; ``on_error(message, level)`` is told when a config file is
    bad (level ``error``) or a run's config cannot be shown (``warning``)."""

    def __init__(self, on_error: Callable[[str, str], None]) -> None:
        self.on_error = on_error
        self.overrides: dict[str, Any] = {}
        self._make_source_fields()
        self._make_run_fields()
        self.preset.changed.connect(self._on_preset)
        self.config_file.changed.connect(lambda *_: self.fill_from_config())
        self.config_file.changed.connect(lambda *_: self._sync_preset())
        self.source.changed.connect(self._on_source_changed)
        self.data_dir.changed.connect(lambda *_: self._follow_data_folder())

    def _make_source_fields(self) -> None:
        """The dataset source and folder, the configuration file and the shipped ones."""
        self.source = ComboBox(
            label="dataset", choices=[SOURCE_COCO, SOURCE_PROJECT], value=SOURCE_COCO
        )
        self.source.tooltip = (
            "A folder with train/ and val/ COCO splits (Export dataset writes one), or the\n"
            "project open in 'Annotate vertebrae', exported into RUN/dataset first."
        )
        self.data_dir = FileEdit(label="folder", mode="d", nullable=True)
        self.data_dir.tooltip = "COCO split folder with train/ and val/ (annotations.json)"
        default_cfg = default_config_path()
        self.config_file = FileEdit(
            label="config", mode="r", filter="*.yaml *.yml", nullable=True,
            value=str(default_cfg) if default_cfg else None,
        )  # fmt: skip
        self.config_file.tooltip = (
            "YAML training configuration (the shipped 'paper' one by default);\n"
            "the fields below override it. Empty: the model defaults (the paper's setup)."
        )
        self.shipped = shipped_config_paths()
        self.preset = ComboBox(
            label="shipped config", choices=[OWN_FILE, *self.shipped],
            value="paper" if default_cfg and "paper" in self.shipped else OWN_FILE,
        )  # fmt: skip
        self.preset.tooltip = (
            "The configurations shipped with napari-vertebra (paper: the paper's setup;\n"
            "smoke: a small CPU model; synth-r50: ResNet-50 on synthetic MIPs);\n"
            f"{OWN_FILE}: the YAML file below."
        )

    def _make_run_fields(self) -> None:
        """The fields over the configuration, the starting weights and the run folder."""
        self.backbone = ComboBox(label="backbone", choices=list(BACKBONES))
        self.class_set = ComboBox(label="classes", choices=list(CLASS_SETS), value="paper")
        self.class_set.tooltip = (
            "paper: T1..L5. extended: also C7, T13, L6 and the sacrum (S1), the landmarks\n"
            "that anchor the count on partial views (docs/levels.md). The data must not\n"
            "hold levels outside the chosen set."
        )
        self.epochs = SpinBox(label="epochs", min=1, max=10000)
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4)
        self.lr.native.setDecimals(6)
        self.batch_size = SpinBox(label="batch size", min=1, max=256)
        self.device = ComboBox(label="device", choices=list(DEVICES), value="auto")
        self.device.tooltip = "auto: the GPU when torch sees one, else the CPU"
        self.weights = FileEdit(
            label="weights", mode="r", filter="*.pt *.pth *.pkl", nullable=True
        )
        self.weights.tooltip = (
            "Optional starting weights (a local file): a napari-vertebra checkpoint, a COCO\n"
            "Mask R-CNN file (torchvision .pth or detectron2 .pkl, docs/transfer.md) or\n"
            "ImageNet backbone weights. Empty: random start."
        )
        self.run_folder = FileEdit(label="run folder", mode="d", value=str(default_run_dir()))
        self.run_folder.tooltip = (
            "Where checkpoints (last.pt, best.pt), log.csv, progress.jsonl and config go"
        )

    @property
    def fields(self) -> tuple[Any, ...]:
        """The fields in form order."""
        return (
            self.source, self.data_dir, self.preset, self.config_file, self.backbone,
            self.class_set, self.epochs, self.lr, self.batch_size, self.device, self.weights,
            self.run_folder,
        )  # fmt: skip

    def fill_from_config(self) -> None:
        """Set the fields from the config file (or the model defaults)."""
        from napari_vertebra.model.config import load_config

        try:
            cfg = load_config(self.config_file.value or None)
        except (ValueError, OSError) as e:
            self.on_error(f"config: {e}", "error")
            return
        if cfg.backbone not in self.backbone.choices:
            self.backbone.choices = [*self.backbone.choices, cfg.backbone]
        self.backbone.value = cfg.backbone
        self.class_set.value = cfg.class_set
        self._follow_data_folder()
        self.epochs.value = cfg.epochs
        self.lr.value = cfg.lr
        self.batch_size.value = cfg.batch_size
        # the file's starting weights, or none: a field left from another config would
        # start this one from weights it does not name
        self.weights.value = str(cfg.weights) if cfg.weights else None

    def follow_data(self, data_dir: Any) -> str | None:
        """Switch the classes to the class set the labels of ``data_dir`` need when the
        field's set cannot name them (C7, T13, L6 or S1 under ``paper``: training would
        stop with an error); returns the set switched to, else None."""
        from napari_vertebra.annotation.dataset import dataset_class_set

        need = dataset_class_set(data_dir)
        if need is None or need == "paper" or need == self.class_set.value:
            return None
        if need not in self.class_set.choices:
            return None
        self.class_set.value = need
        return need

    def _follow_data_folder(self) -> None:
        """:meth:`follow_data` for the chosen COCO folder, said as information."""
        if self.source.value == SOURCE_PROJECT:
            return
        need = self.follow_data(self.data_dir.value)
        if need is not None:
            self.on_error(
                f"classes set to '{need}': the dataset's labels hold levels outside the "
                "paper's T1..L5 (C7, T13, L6 or the sacrum)",
                "info",
            )

    def _on_preset(self, name: str) -> None:
        path = self.shipped.get(name)
        if path is not None and str(self.config_file.value or "") != str(path):
            self.config_file.value = str(path)

    def _sync_preset(self) -> None:
        value = str(self.config_file.value or "")
        name = next((n for n, p in self.shipped.items() if str(p) == value), OWN_FILE)
        if self.preset.value != name:
            with self.preset.changed.blocked():
                self.preset.value = name

    def _on_source_changed(self, value: str) -> None:
        self.data_dir.enabled = value != SOURCE_PROJECT

    def config(self) -> TrainConfig:
        """The configuration of the next run: file, then the fields, then overrides."""
        from napari_vertebra.model.config import load_config

        fields: dict[str, Any] = {
            "backbone": self.backbone.value,
            "class_set": self.class_set.value,
            "epochs": int(self.epochs.value),
            "lr": float(self.lr.value),
            "batch_size": int(self.batch_size.value),
        }
        weights = self.weights.value
        if weights:
            w = Path(weights).expanduser()
            if not w.is_file():
                raise ValueError(
                    f"starting weights {w}: no such file. Put the file there (the paper "
                    "configuration starts from detectron2's COCO R101 model_final_a3ec72.pkl, "
                    "see docs/transfer.md), choose another, or clear the field to train "
                    "from random weights"
                )
            fields["weights"] = str(w.resolve())
        fields.update(self.overrides)
        return load_config(self.config_file.value or None, overrides=fields)

    def run_path(self) -> Path:
        """The run folder field, resolved; ValueError when empty."""
        value = self.run_folder.value
        if value is None or str(value) in ("", "."):
            raise ValueError("choose a run folder")
        return Path(value).expanduser().resolve()

    def show_run_config(self, cfg: dict[str, Any], cfg_file: Path | None) -> None:
        """Fill the fields from a run's config.yaml (what Resume continues with)."""
        from napari_vertebra.model.config import load_config

        if cfg_file is not None and cfg_file.is_file():
            try:
                load_config(cfg_file)
            except (ValueError, OSError, TypeError) as e:
                # keep the config field; the run's settings are in its checkpoint
                self.on_error(
                    f"{cfg_file} is not a configuration this version reads ({e})", "warning"
                )
            else:
                with self.config_file.changed.blocked():
                    self.config_file.value = str(cfg_file)
                self._sync_preset()
        if cfg.get("backbone") in self.backbone.choices:
            self.backbone.value = cfg["backbone"]
        self.class_set.value = cfg.get("class_set") or "paper"  # runs before the key: paper
        for key, fld, cast in (
            ("epochs", self.epochs, int),
            ("lr", self.lr, float),
            ("batch_size", self.batch_size, int),
        ):
            if cfg.get(key) is not None:
                try:
                    fld.value = cast(cfg[key])
                except (TypeError, ValueError):
                    self.on_error(f"{cfg_file}: {key} {cfg[key]!r} is not a number", "warning")
        self.weights.value = cfg.get("weights") or None
