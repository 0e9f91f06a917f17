"""`drive.mount(path)`: links the folder TF_DIFFUSION_TEST_DRIVE (the test's "Google Drive",
holding MyDrive/) to `path`, as Colab's mount makes the Drive appear there."""

import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    if os.path.islink(mountpoint):
        print(
            f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, "
            'call drive.mount("...", force_remount=True).'
        )
        return
    os.makedirs(os.path.dirname(os.path.abspath(mountpoint)), exist_ok=True)
    os.symlink(os.environ["TF_DIFFUSION_TEST_DRIVE"], mountpoint)
    print(f"Mounted at {mountpoint}")
