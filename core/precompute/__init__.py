"""Batch precompute: dashboards for a whole dictionary (or a feature range), resumable.

``python -m core precompute ...`` (see :mod:`core.cli`) and
:func:`core.precompute.run.run_precompute` load a model, a dictionary and a token set
through :mod:`core.sources`, split the requested features into chunks ("features at a
time") and sweep one chunk at a time with the engine. After each chunk its results are
written, and only then the chunk is recorded as done in the manifest. Every file is
written atomically (temporary file + :func:`os.replace`), so a run killed at any moment
leaves complete files only, and the same command started again skips the chunks the
manifest lists and finishes with the same output as an uninterrupted run.

Rooms:

    config.py    PrecomputeConfig, NeuronpediaOptions, their validation; dictionary kinds
    args.py      ``python -m core precompute`` arguments and --config files -> PrecomputeConfig
    run.py       PrecomputeRunner, run_precompute, load_run_sources: the run itself
    progress.py  the tqdm bar and the optional Weights & Biases log
    manifest.py  the directory's format, errors, feature ranges, resume checks (light)
    reader.py    PrecomputedStore: reading an output back without a model (light)
    index.py     which outputs hold which sources: a run registers itself in the app's
                 memo, so workspaces on the same sources read its features (light)

This package imports nothing itself, so ``core.precomputed`` (the reader) stays light.

Output directory::

    manifest.json        specs, configuration, identity, chunk plan, features done/skipped
    memo/                a Memo directory (bytes-only diskcache): per feature its
                         FeatureData bytes under the sources' memo key (the key the
                         app and the API use: :func:`core.memo.feature_key`), per
                         chunk a summary table under ``chunk:{k}:summary``
    html/chunk-KKKKK.html  one self-contained page per chunk (feature picker)
    html/index.html      links to the chunk pages
    neuronpedia/batch-K.json       Neuronpedia batch files (one per chunk)
    neuronpedia/skipped_indexes.json  features listed as dead / below the density threshold

Features are computed through the app's own path (:func:`core.engine.cached.stream_features`,
the sweep behind ``compute_features``). With whole-dictionary correlations (the default) all
chunks are swept together once, since each chunk's own sweep would encode the whole
dictionary again for its correlation columns, and the chunks are then built and written one
by one; otherwise each chunk is swept alone. A run killed during the sweep starts that sweep
again. Features whose density is below ``min_density`` (and features that never fire) are
stored but listed as skipped rather than rendered. :func:`core.precomputed.open_precomputed` reads
such a directory back so the app can browse it without a model.
"""
