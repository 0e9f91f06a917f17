"""`files.download(path)`: instead of the browser download, appends `path` as a line to the
file TF_DIFFUSION_TEST_DOWNLOADS (if set), and prints it."""

import os


def download(filename):
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Cannot find file: {filename}")  # as Colab's
    record = os.environ.get("TF_DIFFUSION_TEST_DOWNLOADS")
    if record:
        with open(record, "a", encoding="utf-8") as file:
            file.write(os.path.abspath(filename) + "\n")
    print(f"download: {filename}")
