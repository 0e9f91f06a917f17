"""A training run's state and its compiled step: the model, Adam, the EMA weights, `train_one`.

`Trainer.train_one` is one compiled step: it takes the network's input and
target from `schedule.training_pair` (the images mixed with noise at their
levels; the next, less noisy image for the classic recipe, the velocity for
the default one, the noise for v1), takes the mean squared error of the
network's output against the target (the absolute error with `loss` mae, as
the classic, v1 and v2 do) and applies one Adam step. It runs through
`tf.distribute`, so the same code serves one device or many.
"""

import keras
import tensorflow as tf

from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE
from tf_diffusion.hardware import check_batch_split, dtype_policy, training_precision
from tf_diffusion.model import call_network, make_model
from tf_diffusion.schedule import NoiseSchedule, loss_weights, training_pair

PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE * IMAGE_CHANNELS


@keras.saving.register_keras_serializable(package="tf_diffusion")
class RoundDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`initial` times `decay` to the power of the finished rounds, never below `floor`."""

    def __init__(self, initial, decay, round_steps, floor):
        self.initial = float(initial)
        self.decay = float(decay)
        self.round_steps = int(round_steps)
        self.floor = float(floor)

    def __call__(self, step):
        rounds = tf.math.floordiv(tf.cast(step, tf.float32), float(self.round_steps))
        rate = self.initial * tf.pow(self.decay, rounds)
        return tf.maximum(rate, self.floor)

    def get_config(self):
        return {
            "initial": self.initial,
            "decay": self.decay,
            "round_steps": self.round_steps,
            "floor": self.floor,
        }


def learning_rate_schedule(config, learning_rate):
    """The rate at each step: "rounds" of x `learning_rate_decay`, or warm-up then cosine.

    "cosine" rises linearly from 0 over `warmup_steps`, then falls along a
    half cosine to `learning_rate_floor` at `max_steps` (raising --max-steps
    on resume stretches what is left of the curve).
    """
    if config.learning_rate_schedule == "rounds":
        return RoundDecay(
            learning_rate,
            config.learning_rate_decay,
            config.round_steps,
            config.learning_rate_floor,
        )
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, config.max_steps - config.warmup_steps),
        alpha=min(1.0, config.learning_rate_floor / learning_rate),
        warmup_target=learning_rate,
        warmup_steps=config.warmup_steps,
    )


class Trainer:
    """The state of a training run and its compiled steps."""

    def __init__(self, config, strategy=None):
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        check_batch_split(config.batch_size, self.strategy.num_replicas_in_sync)
        self.schedule = NoiseSchedule.from_config(config)
        self.precision = training_precision(config.precision)
        learning_rate = config.learning_rate
        if config.scale_learning_rate:
            learning_rate *= self.strategy.num_replicas_in_sync
        # The initial weights come from the seed too, so a run is reproducible.
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            with dtype_policy(self.precision):
                self.model = make_model(config)
            # One copy of the weights per EMA kept (`Config.emas`), sampling's first.
            self.ema_models = {decay: make_model(config) for decay in config.emas}
            for average in self.ema_models.values():
                average.set_weights(self.model.get_weights())
            self.ema_model = self.ema_models.get(config.ema_decay)
            self.adam = keras.optimizers.Adam(learning_rate_schedule(config, learning_rate))
            self.adam.build(self.model.trainable_variables)
            # `optimizer` applies the gradients; `adam` is the plain Adam inside
            # it, which the checkpoint holds as "optimizer" so that float32 and
            # mixed-precision runs save the same Adam variables. A mixed_float16
            # run also saves its dynamic loss scale, as "loss_scale", so that it
            # resumes exactly; a run may switch --precision when it resumes.
            self.optimizer = self.adam
            self.loss_scale = None
            if self.precision == "mixed_float16":  # bfloat16 has float32's range: no scaling
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.adam)
                self.optimizer.build(self.model.trainable_variables)
                self.loss_scale = tf.Module(name="loss_scale")
                self.loss_scale.dynamic_scale = self.optimizer.dynamic_scale
                self.loss_scale.step_counter = self.optimizer.step_counter
            # Used only when `train_one` is called without levels and noise.
            self.generator = tf.random.Generator.from_seed(config.seed)
            # The data pipeline's position: a resumed run starts it here.
            self.batches_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="batches_seen")
        self.train_one = tf.function(self._train_one, jit_compile=config.xla or None)
        self.train_steps = tf.function(self._train_steps, jit_compile=None)

    # ---- state

    @property
    def step(self):
        """The number of optimizer steps taken so far."""
        return int(self.adam.iterations.numpy())

    @property
    def learning_rate(self):
        return float(self.adam.learning_rate.numpy())

    @property
    def sampling_model(self):
        """The EMA weights when the recipe keeps them, else the trained weights."""
        return self.ema_model if self.ema_model is not None else self.model

    def trackables(self):
        """What a checkpoint must hold to continue this run exactly."""
        objects = {
            "model": self.model,
            "optimizer": self.adam,
            "generator": self.generator,
            "batches_seen": self.batches_seen,
        }
        for decay, name in self.config.emas.items():
            objects[name] = self.ema_models[decay]
        if self.loss_scale is not None:
            objects["loss_scale"] = self.loss_scale
        return objects

    # ---- steps

    def _replica_step(self, images, levels, noises):
        inputs, targets = training_pair(
            self.schedule, self.config.prediction, images, levels, noises
        )
        global_batch = tf.shape(images)[0] * self.strategy.num_replicas_in_sync
        config = self.config
        with tf.GradientTape() as tape:
            outputs = call_network(self.model, inputs, levels, training=True)
            errors = tf.abs(outputs - targets)
            if config.loss_weighting != "none":
                errors *= loss_weights(
                    self.schedule,
                    config.prediction,
                    config.loss_weighting,
                    levels,
                    config.min_snr_gamma,
                )
            if config.loss == "mse":
                errors = tf.square(errors)
            loss = tf.reduce_sum(errors) / tf.cast(global_batch * PIXELS_PER_IMAGE, tf.float32)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables))
        return loss

    def _update_ema(self):
        # Early on the decay is (1 + step) / (10 + step), an average over about the last
        # ninth of the steps, until it reaches the EMA's own decay.
        step = tf.cast(self.adam.iterations, tf.float32)
        for most, averages in self.ema_models.items():
            decay = tf.minimum(most, (1.0 + step) / (10.0 + step))
            for average, weight in zip(averages.weights, self.model.weights):
                average.assign(decay * average + (1.0 - decay) * tf.cast(weight, average.dtype))

    def _train_one(self, images, levels=None, noises=None):
        """One step on a batch of images in [-1, 1]; returns the loss, the `loss` error.

        `levels` and `noises` normally come from the data pipeline; without
        them they are drawn here from the run's random generator.
        """
        if levels is None:
            batch = tf.shape(images)[0]
            levels = self.schedule.generate_ts(batch, self.generator)
            noises = self.generator.normal(tf.shape(images))
        per_replica_loss = self.strategy.run(self._replica_step, args=(images, levels, noises))
        self._update_ema()
        self.batches_seen.assign_add(1)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    def _train_steps(self, iterator, count):
        """`count` steps from a (distributed) iterator in one call; returns the mean loss."""
        total = tf.constant(0.0)
        for _ in tf.range(count):
            images, levels, noises = next(iterator)
            total += self._train_one(images, levels, noises)
        return total / tf.cast(count, tf.float32)
