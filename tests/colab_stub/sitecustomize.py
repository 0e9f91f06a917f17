"""Run at start-up by every Python whose PYTHONPATH holds tests/colab_stub (the test kernels
of notebooks/colab.ipynb and the train.py they start): with TF_DIFFUSION_TEST_HOSTNAME set,
`socket.gethostname()` returns it, so that each kernel looks like another Colab VM to the
run folder's lock."""

import os
import socket

if os.environ.get("TF_DIFFUSION_TEST_HOSTNAME"):
    socket.gethostname = lambda hostname=os.environ["TF_DIFFUSION_TEST_HOSTNAME"]: hostname
