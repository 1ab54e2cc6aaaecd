"""Helpers for the course *Adversarial attacks on medical image classifiers*.

One module per idea, grown chapter by chapter:

* :mod:`helpers.scales`    - the ``smoke``/``cpu``/``gpu``/``paper`` presets
* :mod:`helpers.data`      - MedMNIST loading, the papers' sampling
* :mod:`helpers.synthetic` - labelled synthetic stand-ins for offline machines
* :mod:`helpers.models`    - ImageNet backbones with the preprocessing inside the model
* :mod:`helpers.training`  - paper 000's fine-tuning protocol and the model cache
* :mod:`helpers.metrics`   - accuracy, confusion matrices, fooling and success rates
* :mod:`helpers.plots`     - the figures of the chapters
* :mod:`helpers.uap`       - universal adversarial perturbations (faithful and batched)
* :mod:`helpers.victims`   - the UAP chapters' models and image sets
* :mod:`helpers.vulnerability` - rates versus UAP size, random controls, transferability
* :mod:`helpers.natural`   - natural photos as the attack set (paper 001)
* :mod:`helpers.pixel`     - one- and few-pixel attacks by differential evolution (paper 004)
* :mod:`helpers.pixel_tables` - paper 004's tables of a pixel attack's results
* :mod:`helpers.retrain`   - adversarial retraining against UAPs (paper 000)
* :mod:`helpers.own_process` - a training or retraining run in a process of its own (``paper``)
* :mod:`helpers.records`   - the key numbers each chapter records
* :mod:`helpers.environment` - versions, GPU and weights, checked first by every chapter

Behind them: :mod:`helpers.cache` (the course cache), :mod:`helpers.checks` (parameter checks),
:mod:`helpers.costs` and :mod:`helpers.timing` (image passes and times), :mod:`helpers.config`,
and :mod:`helpers.tools`, the pipeline and regression report that build and check the course.
"""

import os as _os

__version__ = "0.1.0"

# On a GPU, TensorFlow takes all of its memory at the first operation unless told to grow: a model
# trained in a process of its own (helpers.own_process) then would find none. Read when TensorFlow
# first touches the GPU, so it must be set before any model runs; a value set by the reader wins.
_os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
