"""Tools that build and check the course, not part of what the chapters teach.

* :mod:`helpers.tools.pipeline`   - executes the chapters with papermill and builds the Jupyter Book
  (``python -m helpers.tools.pipeline``, ``make book``);
* :mod:`helpers.tools.regression` - the chapters' numbers against references derived from a seed
  spread (``python -m helpers.tools.regression``, ``make regress``).
"""
