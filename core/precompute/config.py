"""What one precompute run needs: :class:`PrecomputeConfig` and its validation.

Also the dictionary kinds a run may insist on (``--transcoder``, ``--skip-transcoder``,
``--clt``) and the check that the loaded dictionary is of that kind.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.config import ConfigError, FeatureBoundsError, RunConfig, parse_feature_ranges
from core.dictionaries.protocol import DICTIONARY_ROLES, DictionaryRole
from core.export.html import check_layout
from core.precompute.manifest import RunnerError
from core.specs import DatasetSpec, DictionarySpec, ModelSpec

if TYPE_CHECKING:
    from core.dictionaries.protocol import Dictionary

OUTPUTS = ("memo", "html", "neuronpedia")


@dataclass
class NeuronpediaOptions:
    """Labels of the Neuronpedia batch files (``None``: derived from the sources).

    Attributes:
        model_id: Neuronpedia model id (default: the dictionary's ``model_name``, else
            the model's name).
        layer: layer number (default: the CLT layer, else the ``blocks.N.`` of the hook).
        set_name: source set name (default: the SAELens release, else the dictionary
            directory's name).
        sae_id_suffix: optional ``__suffix`` after the set.
        dataset: dataset label written per feature (default: the dataset path).
    """

    model_id: str | None = None
    layer: int | None = None
    set_name: str | None = None
    sae_id_suffix: str | None = None
    dataset: str | None = None


@dataclass
class PrecomputeConfig:
    """Everything one precompute run needs.

    Attributes:
        output_dir: where results go (created; resumed when it holds the same run).
        model, dictionary, dataset: the sources (see :mod:`core.sources`).
        run: engine settings (hook, batch size, device, dtype, windows, table sizes...);
            its ``features`` field is ignored in favour of :attr:`features`.
        features: ``None``/``"all"``, a range such as ``"0:4096"``, or a list.
        features_per_chunk: features swept together ("features at a time"); each chunk
            is one sweep over the tokens and one HTML page / Neuronpedia batch.
        min_density: features firing on a smaller fraction of tokens (and features that
            never fire) are listed as skipped, not rendered.
        outputs: any of ``memo``, ``html``, ``neuronpedia``.
        layout: HTML components in order (names from :data:`core.charts.COMPONENTS`).
        expect_role: ``"transcoder"``, ``"skip_transcoder"``, ``"clt"`` or ``"sae"``:
            fail early when the loaded dictionary is of another kind.
        neuronpedia: labels of the Neuronpedia files.
        wandb: log the configuration and progress to Weights & Biases (respects
            ``WANDB_MODE``, e.g. ``offline``).
        wandb_project: the W&B project name.
        threads: torch CPU threads (``None``: torch's default).
        writers: processes that build and write the Neuronpedia batches while the run goes
            on (:mod:`core.precompute.background`); ``0`` (the default here): in the run's
            own process; ``None``: one per core but the run's own (at most 4) for runs of 4,096
            features or more, what the command line does. Workers are spawned and re-import the main
            module: a script that sets this needs ``if __name__ == "__main__":``.
        progress: show a progress bar on stderr.
        overwrite: delete a different run's results in ``output_dir`` instead of failing.
        free_unused_layers: drop the model's blocks after the hook once loaded (keeping
            ``ln_final`` and ``W_U``); the results are the same, the model takes less memory.
    """

    output_dir: str
    model: ModelSpec = field(default_factory=ModelSpec)
    dictionary: DictionarySpec = field(default_factory=DictionarySpec)
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    run: RunConfig = field(default_factory=RunConfig)
    features: str | list[int] | None = None
    features_per_chunk: int = 512
    min_density: float = 0.0
    outputs: list[str] = field(default_factory=lambda: list(OUTPUTS))
    layout: list[str] | None = None
    expect_role: DictionaryRole | None = None
    neuronpedia: NeuronpediaOptions = field(default_factory=NeuronpediaOptions)
    wandb: bool = False
    wandb_project: str = "featurescope-precompute"
    threads: int | None = None
    writers: int | None = 0
    progress: bool = True
    overwrite: bool = False
    free_unused_layers: bool = False

    def validate(self) -> None:
        """Raise :class:`RunnerError` for settings that cannot work (before loading anything)."""
        if not self.output_dir:
            raise RunnerError("an output directory is needed (--output-dir)")
        if not isinstance(self.features_per_chunk, int) or self.features_per_chunk < 1:
            raise RunnerError(
                f"features at a time must be a positive integer, got {self.features_per_chunk!r}"
            )
        if not isinstance(self.min_density, int | float) or not 0 <= self.min_density <= 1:
            raise RunnerError(
                f"the density threshold must be between 0 and 1, got {self.min_density!r}"
            )
        bad = [o for o in self.outputs if o not in OUTPUTS]
        if bad or not self.outputs:
            raise RunnerError(f"outputs must be a non-empty subset of {list(OUTPUTS)}, got {bad}")
        if self.expect_role is not None and self.expect_role not in DICTIONARY_ROLES:
            raise RunnerError(
                f"unknown dictionary role {self.expect_role!r} (known: {', '.join(DICTIONARY_ROLES)})"
            )
        if self.expect_role is not None and (self.expect_role == "clt") != (
            self.dictionary.kind == "clt"
        ):
            raise RunnerError(
                "a cross-layer transcoder is given with --clt PATH --clt-layer N; the other "
                "dictionaries with --dictionary (or --sae-set/--sae-path)"
            )
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise RunnerError(f"threads must be a positive integer, got {self.threads!r}")
        if self.writers is not None and (
            not isinstance(self.writers, int) or isinstance(self.writers, bool) or self.writers < 0
        ):
            raise RunnerError(
                f"writers must be a number of processes (0 or more) or None, got {self.writers!r}"
            )
        if self.layout is not None:
            try:
                check_layout(self.layout)
            except ValueError as exc:
                raise RunnerError(str(exc)) from exc
        try:  # the text is read, never expanded; bounds are checked once the size is known
            if not isinstance(self.features, list):
                parse_feature_ranges(self.features)
        except FeatureBoundsError:
            pass
        except ConfigError as exc:
            raise RunnerError(str(exc)) from exc

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["run"] = self.run.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrecomputeConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RunnerError(f"unknown precompute setting(s) {unknown}; known: {sorted(known)}")
        for name, spec in (("model", ModelSpec), ("dictionary", DictionarySpec)):
            if isinstance(d.get(name), dict):
                d[name] = spec.from_dict(d[name])
        if isinstance(d.get("dataset"), dict):
            d["dataset"] = DatasetSpec.from_dict(d["dataset"])
        if isinstance(d.get("run"), dict):
            d["run"] = RunConfig.from_dict(d["run"])
        if isinstance(d.get("neuronpedia"), dict):
            d["neuronpedia"] = NeuronpediaOptions(**d["neuronpedia"])
        return cls(**d)


def check_role(dictionary: Dictionary, expected: DictionaryRole | None) -> None:
    """Fail when a ``--transcoder``/``--skip-transcoder``/``--clt`` flag does not match."""
    if expected is None:
        return
    got = dictionary.role
    if got != expected:
        arch = dictionary.identity().get("architecture", dictionary.family)
        raise RunnerError(
            f"the run asks for a {expected.replace('_', ' ')} but the dictionary is a "
            f"{got.replace('_', ' ')} (architecture {arch!r}): drop the flag or load the right "
            "dictionary"
        )
