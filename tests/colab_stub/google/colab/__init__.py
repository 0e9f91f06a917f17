"""A stand-in for Colab's `google.colab`, to run notebooks/colab.ipynb's Colab branch headless.

`tests/colab_stub/google` has no `__init__.py`, so `google` stays a namespace package and
`google.protobuf` (TensorFlow's) still imports.
"""

from google.colab import drive, files  # noqa: F401
