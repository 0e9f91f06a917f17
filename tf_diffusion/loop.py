"""The training loop around the compiled step: saves on time, progress, Ctrl-C and SIGTERM.

`fit` calls `Trainer.train_one` until the run's end, hands the step to the
caller's save and round-end callbacks, and stops only between two whole
steps; `Progress` shows a bar on a terminal and plain lines elsewhere, and
writes TensorBoard's scalars and sample images.
"""

import contextlib
import math
import signal
import sys
import threading
import time

import tensorflow as tf

from tf_diffusion import TrainingDiverged

QUIET_LINE_SECONDS = 60.0


class Progress:
    """Step, loss, learning rate, images/s and ETA: a bar on a terminal, lines elsewhere.

    Also writes the scalars, and the sample images of each round, to
    TensorBoard when given a summary writer.
    """

    def __init__(
        self,
        start_step,
        max_steps,
        batch_size,
        quiet=False,
        writer=None,
        line_seconds=10.0,
        stream=None,
    ):
        self.stream = stream or sys.stdout
        self.start_step = start_step
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.writer = writer
        self.line_seconds = line_seconds
        self.start_time = time.monotonic()
        self.last_line_time = -math.inf
        self.bar = None
        if quiet:
            self.line_seconds = max(line_seconds, QUIET_LINE_SECONDS)
        elif self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=max_steps,
                initial=start_step,
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
            )

    def update(self, step, loss, learning_rate):
        now = time.monotonic()
        elapsed = now - self.start_time
        steps_done = step - self.start_step
        images_per_second = steps_done * self.batch_size / elapsed if elapsed > 0 else 0.0
        seconds_per_step = elapsed / steps_done if steps_done else 0.0
        eta = seconds_per_step * (self.max_steps - step)
        self.scalars(
            step,
            {"loss": loss, "learning_rate": learning_rate, "images_per_second": images_per_second},
        )
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{loss:.4f}",
                lr=f"{learning_rate:.2e}",
                img_s=f"{images_per_second:.1f}",
                refresh=False,
            )
            return
        final = step >= self.max_steps
        if final or now - self.last_line_time >= self.line_seconds:
            self.last_line_time = now
            print(
                f"step {step}/{self.max_steps}  loss {loss:.4f}  lr {learning_rate:.2e}  "
                f"{images_per_second:.1f} img/s  {seconds_per_step:.2f} s/step  "
                f"ETA {format_duration(eta)}",
                file=self.stream,
                flush=True,
            )

    def samples(self, step, images, most=16):
        """Show up to `most` sample images (floats in [-1, 1]) in TensorBoard at `step`."""
        if self.writer is not None:
            with self.writer.as_default(step=step):
                pictures = tf.clip_by_value((images[:most] + 1.0) / 2.0, 0.0, 1.0)
                tf.summary.image("samples", pictures, max_outputs=most)

    def scalars(self, step, values):
        """Write each of `values` (a name to a number) to TensorBoard at `step`."""
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(name, value)

    def message(self, text):
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()


def format_duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def fit(
    trainer,
    iterator,
    max_steps,
    progress=None,
    on_save=None,
    on_round_end=None,
    save_every=1000,
    save_every_minutes=10.0,
    steps_per_call=1,
    max_seconds=None,
):
    """Train until `max_steps`, or for `max_seconds`, calling `on_save(step)` and
    `on_round_end(step)` on time; return the step reached.

    Raises `TrainingDiverged`, without saving, when the loss stops being finite.
    A first Ctrl-C or SIGTERM raises `KeyboardInterrupt` between two whole steps,
    not inside TensorFlow or a save; a second one raises at once, wherever the
    loop is (see `interrupts_between_steps`).
    """
    with interrupts_between_steps() as interrupted:
        config = trainer.config
        last_save_time = started = time.monotonic()
        step = trainer.step
        while step < max_steps and (
            max_seconds is None or time.monotonic() - started < max_seconds
        ):
            if interrupted:
                raise KeyboardInterrupt(f"signal {interrupted[0]}")
            count = min(steps_per_call, max_steps - step)
            if count == 1:
                images, levels, noises = next(iterator)
                loss = trainer.train_one(images, levels, noises)
            else:
                loss = trainer.train_steps(iterator, tf.constant(count))
            loss = float(loss)
            new_step = trainer.step
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"the loss became {loss} at step {new_step}; nothing was saved after the last "
                    "checkpoint. Lower `learning_rate` or use `precision` float32, then run again "
                    "to resume"
                )
            if progress is not None:
                progress.update(new_step, loss, trainer.learning_rate)
            round_ended = new_step // config.round_steps > step // config.round_steps
            save_due = new_step // save_every > step // save_every or (
                save_every_minutes and time.monotonic() - last_save_time >= 60 * save_every_minutes
            )
            step = new_step
            if on_round_end is not None and round_ended:
                on_round_end(step)
            if on_save is not None and save_due and step < max_steps:
                on_save(step)
                last_save_time = time.monotonic()
        return step


@contextlib.contextmanager
def interrupts_between_steps(signal_numbers=(signal.SIGINT, signal.SIGTERM)):
    """While inside, Ctrl-C and SIGTERM only note the signal, in the list this yields.

    An exception raised by a signal handler can land anywhere in the main thread:
    inside TensorFlow's Python layer or halfway through a save. So the training
    loop reads the list between steps instead. A second signal raises at once,
    for a user who will not wait. A signal whose handler is not a Python function
    (ignored, or the default that ends the process) is left alone, and so is
    everything outside the main thread, where Python cannot set handlers.
    """
    interrupted = []

    def note(signal_number, frame):
        if interrupted:
            raise KeyboardInterrupt(f"signal {signal_number}, again")
        interrupted.append(signal_number)
        print(
            "\nStopping after this step (interrupt again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signal_number in signal_numbers:
            handler = signal.getsignal(signal_number)
            if callable(handler):
                previous[signal_number] = signal.signal(signal_number, note)
    try:
        yield interrupted
    finally:
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)
