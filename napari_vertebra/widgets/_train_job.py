"""The Train widget's GPU probe and cluster job (a mixin of :class:`~.train.TrainWidget`).

Without a GPU here, the widget says so and offers to write a cluster job: the dataset,
``RUN/job_config.yaml``, a torchrun script and a Slurm job
(:func:`napari_vertebra.model.cluster.write_cluster_job`).
"""

from __future__ import annotations

from pathlib import Path

from napari_vertebra.model import cluster
from napari_vertebra.model.run import GpuProbe

__all__ = ["ClusterJobMixin"]


class ClusterJobMixin:
    """GPU probe and "Write cluster job" (uses the widget's form, session and messages)."""

    def probe_gpu(self) -> None:
        """Find out in a subprocess (the viewer does not wait for torch to import)
        whether torch sees a GPU; without one, suggest writing a cluster job."""
        if self._gpu_probe is None:
            self._gpu_probe = GpuProbe()
        self._check_gpu_probe()

    def _check_gpu_probe(self) -> None:
        answer = self._gpu_probe.poll() if self._gpu_probe is not None else False
        if answer is None:
            if not self._gpu_timer.isActive():
                self._gpu_timer.start()
            return
        self._gpu_timer.stop()
        self._show_gpu(answer)

    @property
    def gpu_available(self) -> bool | None:
        """Whether torch sees a GPU here (None until the probe has answered)."""
        from napari_vertebra.model import run as run_module

        return run_module.GPU_AVAILABLE

    def _show_gpu(self, available: bool) -> None:
        self.gpu_label.visible = not available
        if available:
            self.gpu_label.value = ""
            return
        self.gpu_label.value = (
            "No GPU here: training on the CPU is slow. 'Write cluster job' prepares a GPU "
            "run; 'Load run' shows it back here."
        )
        self.gpu_label.native.setStyleSheet("color: #ffb454;")
        self.cluster_button.native.setStyleSheet("font-weight: bold;")

    def write_job(self) -> Path | None:
        """Write the dataset (for the open project), RUN/job_config.yaml, RUN/run.sh
        (torchrun) and RUN/job.sbatch (Slurm). Returns the run folder, or None."""
        try:
            run_dir = self.form.run_path()
            cfg = self.config()
            data, project = self._data_source()
            run_dir.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as e:
            self._message(f"Train: cannot write the job: {e}")
            return None

        def then(data: Path) -> None:
            try:
                files = cluster.write_cluster_job(run_dir, cfg, data)
            except OSError as e:
                self._message(f"Train: cannot write the job: {e}")
                return
            self.status.set(f"wrote {', '.join(f.name for f in files)} in {run_dir}", "ok")

        if project is None:
            then(data)
        else:
            self._export(project, run_dir, then)
        return run_dir
