"""A training run's state and its compiled step: the model, Adam, the EMA weights, `train_one`.

`Trainer.train_one` is one compiled step: the run's loss (`diffusion.loss`,
or the classic's in `legacy.py`) on a batch of images at their times t and
noise, averaged over the global batch's pixels, one Adam step, and the EMA weights
moved towards the new ones. It runs through `tf.distribute`, so the same code
serves one device or many.
"""

import keras
import tensorflow as tf

from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE
from tf_diffusion.hardware import check_batch_split, dtype_policy, training_precision
from tf_diffusion.legacy import RoundDecay, loss_for, schedule_for
from tf_diffusion.model import make_model

PIXELS_PER_IMAGE = IMAGE_SIZE * IMAGE_SIZE * IMAGE_CHANNELS


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
        self.schedule = schedule_for(config)
        self.loss = loss_for(config)
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
            # Used only when `train_one` is called without times and noise.
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

    def _replica_step(self, images, t, noises):
        global_batch = tf.shape(images)[0] * self.strategy.num_replicas_in_sync
        with tf.GradientTape() as tape:
            losses = self.loss(self.model, self.schedule, self.config, images, t, noises)
            # The mean over the global batch's pixels, summed over the replicas.
            loss = tf.reduce_sum(losses) / tf.cast(global_batch * PIXELS_PER_IMAGE, tf.float32)
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

    def _train_one(self, images, t=None, noises=None):
        """One step on a batch of images in [-1, 1]; returns the loss, the `loss` error.

        `t` and `noises` normally come from the data pipeline; without them they
        are drawn here from the run's random generator, t as T minus a level in
        {0, ..., T - 1}, as the classic recipe drew it.
        """
        if t is None:
            timesteps = self.schedule.timesteps
            t = timesteps - self.generator.uniform((tf.shape(images)[0],), 0, timesteps, tf.int32)
            noises = self.generator.normal(tf.shape(images))
        per_replica_loss = self.strategy.run(self._replica_step, args=(images, t, noises))
        self._update_ema()
        self.batches_seen.assign_add(1)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    def _train_steps(self, iterator, count):
        """`count` steps from a (distributed) iterator in one call; returns the mean loss."""
        total = tf.constant(0.0)
        for _ in tf.range(count):
            images, t, noises = next(iterator)
            total += self._train_one(images, t, noises)
        return total / tf.cast(count, tf.float32)
