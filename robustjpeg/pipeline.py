"""evaluate(): one model's whole evaluation from Python, the steps `robustjpeg sweep` runs, in one call.

    run = robustjpeg.evaluate(model, "mnist5k", "quick", n=200)
    print(run.at(0.1), run.verdict.status)

It orders the stages (data, subset, fit and probe, suite budgets, sweep) and reads the run folder back; the CLI's
sweep and eval use the same `prepare` step, so the two give the same per-sample outcomes.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from robustjpeg.attacks.budgets import fit_suite
from robustjpeg.attacks.suites import Suite, load_suite
from robustjpeg.data.datasets import Dataset, eval_subset, load_dataset
from robustjpeg.data.preprocess import Preprocess
from robustjpeg.errors import BadInput
from robustjpeg.evaluation.sweep import SweepConfig, run_sweep
from robustjpeg.models.info import ModelInfo
from robustjpeg.models.loading import fit_to_data, load_model
from robustjpeg.models.probe import probe_model
from robustjpeg.report.markdown import markdown_sections
from robustjpeg.report.runs import Run, load_run

DataArg = str | Dataset | tuple[Tensor, Tensor]


@dataclass
class Prepared:
    """What a sweep needs, checked: the model fitted to the data, and the evaluation subset."""

    model: nn.Module
    x: Tensor
    y: Tensor
    indices: Tensor
    dataset: str
    facts: dict | None

    def sweep(self, suite: Suite, out: Path, info: ModelInfo, transfer_source: nn.Module | None = None,
              **settings) -> dict:
        """Run `suite` on this subset into `out`; settings are SweepConfig's (the subset's own facts filled in)."""
        config = SweepConfig(**{"indices": self.indices, "dataset": self.dataset, "data_facts": self.facts, **settings})
        return run_sweep(self.model, self.x, self.y, suite, out, config, model_info=info,
                         transfer_source=transfer_source)


def prepare(model: nn.Module, info: ModelInfo, data: Dataset | tuple[Tensor, Tensor], *, n: int | None,
            seed: int, device: torch.device, workers: int | None = None, label: str | None = None) -> Prepared:
    """The evaluation subset (class-stratified, the same for every model with this seed) and a model checked to fit
    it (input size, class count) and probed (NaN, probabilities, chance), before any attack runs; label names the
    model in the probe's messages (a benchmark's model name)."""
    if isinstance(data, tuple):
        x, y, indices = _tensors(*data, n)
        name, classes, facts = "tensors", int(y.max()) + 1, None
    else:
        subset = eval_subset(data, n, seed, Preprocess.from_dict(info.preprocess),
                             Preprocess.from_dict(info.preprocess_defaults), workers)
        x, y, indices, name, classes, facts = (subset.x, subset.y, subset.indices, data.name, len(data.classes),
                                               subset.facts)
    model = fit_to_data(model, info, x[:2].to(device), classes, name)
    probe_model(model, info, x, y, classes, name, device, name=label)
    return Prepared(model, x, y, indices, name, facts)


def fitted_suite(suite: str | Path | Suite, data: Dataset | tuple, eps: list[float] | None = None,
                 standard_eps: float | None = None, l2_eps: list[float] | None = None,
                 standard_l2_eps: float | None = None) -> Suite:
    """The suite over the budgets of this data (a shipped suite on MNIST-family data: the MNIST grids) and flags."""
    family = None if isinstance(data, tuple) else data.family
    if isinstance(suite, Suite):
        return fit_suite(suite, None, family, eps, standard_eps, l2_eps, standard_l2_eps)
    return fit_suite(load_suite(suite), suite, family, eps, standard_eps, l2_eps, standard_l2_eps)


def headline(results: dict, suite: Suite) -> str:
    """", worst case at Linf EPS: ACC" at the suite's standard Linf budget, or "" when its grid lacks that budget."""
    at = [w for w in results["worst_case"] if w["norm"] == "Linf" and w["eps"] == suite.standard_eps]
    return f", worst case at Linf {suite.standard_eps:.4g}: {at[0]['accuracy']:.4f}" if at else ""


def _tensors(x: Tensor, y: Tensor, n: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """(x, y) given directly: the first n (they are the caller's chosen set), float images and int labels."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise BadInput("data as tensors must be (x, y): float NCHW images in [0, 1] and as many int labels")
    keep = slice(None) if n is None else slice(0, n)
    return x[keep].float(), y[keep].long(), torch.arange(len(y))[keep]


def evaluate(model: nn.Module | str | Path, data: DataArg, suite: str | Path | Suite = "quick", *,
             n: int | None = None, eps: list[float] | None = None, standard_eps: float | None = None, seed: int = 0,
             device: str | torch.device | None = None, out: str | Path | None = None, resume: bool = False,
             transfer_from: nn.Module | str | Path | None = None, jpeg_mode: str | None = None,
             name: str | None = None, defended: bool = False, batch_size: int | None = None,
             progress: bool = False) -> Evaluation:
    """Attack `model` with `suite` on `data` (a data set name, a Dataset, or (x, y) tensors) and return the run.

    device None: the model's own device. out None: a fresh temporary folder (nothing lands in the working
    directory). defended: the model is meant to be robust (check 13 then expects no collapse).
    """
    if isinstance(model, (str, Path)):
        model, info = load_model(model, device=device or "cpu", name=name, defended=defended)
    else:
        info = ModelInfo(name or type(model).__name__, _weights_sha256(model), defended=defended)
    device = torch.device(device) if device is not None else _device_of(model)
    data = load_dataset(data) if isinstance(data, str) else data
    suite = fitted_suite(suite, data, eps, standard_eps)
    prepared = prepare(model, info, data, n=n, seed=seed, device=device)
    source = load_model(transfer_from, device=device)[0] if isinstance(transfer_from, (str, Path)) else transfer_from
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="robustjpeg-"))
    prepared.sweep(suite, folder, info, source, seed=seed, device=device, resume=resume, batch_size=batch_size,
                   progress=progress, jpeg_mode=jpeg_mode)
    return Evaluation(load_run(folder))


def _device_of(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _weights_sha256(model: nn.Module) -> str:
    """A content hash of the model's weights, its identity in reports and history when it has no file."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Evaluation:
    """A finished evaluation: the run folder as read back, with the accessors a notebook wants."""

    run: Run

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def verdict(self):
        return self.run.verdict

    @property
    def checks(self) -> list[dict]:
        return self.run.checks

    @property
    def clean(self) -> dict:
        return self.run.clean

    @property
    def robust_standard(self) -> dict | None:
        return self.run.robust_standard

    def worst_case(self, norm: str | None = None) -> list[dict]:
        """Worst case over attacks per budget ({norm, eps, n, robust, accuracy, ci95}), of one norm or all."""
        return [w for w in self.run.results["worst_case"] if norm is None or w["norm"] == norm]

    def at(self, eps: float, norm: str = "Linf") -> dict | None:
        """The worst-case record at one budget, or None when the suite has no such budget."""
        return self.run.worst_at(norm, eps)

    def to_frame(self):
        """One row per attack cell and per worst-case budget (pandas DataFrame; needs pandas)."""
        import pandas as pd

        rows = [{**c, "scope": "attack"} for c in self.run.results["cells"]]
        rows += [{**w, "attack": "worst case", "scope": "worst case"} for w in self.run.results["worst_case"]]
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        """The run's summary, accuracy-by-budget and sanity-check sections, as report.md writes them."""
        return markdown_sections([self.run])
