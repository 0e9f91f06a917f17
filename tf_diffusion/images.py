"""Pictures: sample grids and denoising strips as PNG (matplotlib), and GIFs (Pillow)."""

import contextlib
import math

import matplotlib

matplotlib.use("Agg")  # files only; no window is ever opened
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tf_diffusion import UsageError  # noqa: E402
from tf_diffusion.files import atomic_path  # noqa: E402


def to_uint8(images):
    """float images in [-1, 1] to uint8 0..255 (uint8 input passes through)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.round(np.clip((images.astype(np.float32) + 1.0) * 127.5, 0, 255)).astype(np.uint8)


def tile(images, rows, columns, padding=2):
    """One uint8 picture of `images` laid out in `rows` x `columns`, on white."""
    images = to_uint8(images)
    count, height, width, channels = images.shape
    sheet = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
        255,
        np.uint8,
    )
    for index in range(min(count, rows * columns)):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        sheet[top : top + height, left : left + width] = images[index]
    return sheet


def save_grid(images, path, rows=None, columns=None, scale=4, title=None):
    """Write `images` as a PNG grid, each pixel drawn `scale` x `scale`."""
    if rows is None or columns is None:
        rows, columns = near_square(len(images))
    sheet = tile(images, rows, columns)
    height, width = sheet.shape[:2]
    dots_per_inch = 100
    figure = plt.figure(
        figsize=(
            width * scale / dots_per_inch,
            height * scale / dots_per_inch + (0.3 if title else 0),
        ),
        dpi=dots_per_inch,
    )
    axes = figure.add_axes((0, 0, 1, height * scale / (height * scale + (30 if title else 0))))
    axes.imshow(sheet, interpolation="nearest")
    axes.axis("off")
    if title:
        figure.suptitle(title, fontsize=9, y=0.995, va="top")
    write_figure(figure, path)


def save_strip(frames, times, path, scale=3):
    """Write the denoising of each sample as a row of frames labelled with their time t.

    `frames` has shape (steps, num, 32, 32, 3); `times` gives each frame's t.
    """
    frames = to_uint8(frames)
    steps, count = frames.shape[:2]
    figure, axes = plt.subplots(
        count,
        steps,
        figsize=(steps * 0.32 * scale, count * 0.36 * scale),
        squeeze=False,
        gridspec_kw={"wspace": 0.05, "hspace": 0.05},
    )
    for row in range(count):
        for column in range(steps):
            axis = axes[row][column]
            axis.imshow(frames[column, row], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"t={int(times[column])}", fontsize=7)
    write_figure(figure, path)


def save_gif(frames, times, path, milliseconds_per_frame=120, scale=4, hold_last=8):
    """Write an animated GIF with one frame per step: the samples as a grid, denoising."""
    from PIL import Image

    frames = to_uint8(frames)
    rows, columns = near_square(frames.shape[1])
    pictures = []
    for frame in frames:
        sheet = tile(frame, rows, columns)
        picture = Image.fromarray(sheet).resize(
            (sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST
        )
        pictures.append(picture)
    durations = [milliseconds_per_frame] * len(pictures)
    durations[-1] = milliseconds_per_frame * hold_last
    with unwritable_as_usage_error(path), atomic_path(path) as temporary:
        pictures[0].save(
            temporary,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=durations,
            loop=0,
            disposal=1,
            optimize=False,
        )


def write_figure(figure, path):
    try:
        with unwritable_as_usage_error(path), atomic_path(path) as temporary:
            figure.savefig(temporary, format="png")
    finally:
        plt.close(figure)


@contextlib.contextmanager
def unwritable_as_usage_error(path):
    """Report a file that cannot be written as one line (the command lines check it earlier)."""
    try:
        yield
    except OSError as error:
        raise UsageError(
            f"{path} cannot be written ({error.strerror or error}); choose another path"
        ) from None


def near_square(count):
    """(rows, columns) of a near-square grid of `count` images."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns
