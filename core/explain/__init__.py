"""Words for features: automatic labels (no language model) and explanations written and
scored by a language model.

* :mod:`.autolabel` labels a feature from its dashboard data alone (``kind="auto"``).
* :mod:`.prompts` builds the explainer and scorer prompts and reads the model's answers.
* :mod:`.scoring` turns scripted or model answers into accuracy, precision, recall and F1.
* :mod:`.backends` talks to an OpenAI-compatible endpoint or a local Hugging Face model.
* :mod:`.negatives` finds token windows where a feature is 0 (the scorer's counter-examples).
* :mod:`.batch` explains and scores many features, resumable, through an
  :class:`~core.explain.sink.ExplanationSink` (the knowledge store).
"""
