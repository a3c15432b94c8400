"""``python -m train --config configs/<name>.py --workdir DIR [--config.field=value ...]``.

Multi-host: on TPU VMs ``jax.distributed.initialize()`` is called automatically; elsewhere pass
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` to every process.

Environment: ``LIGHTJAX_TUNE_MALLOC=1`` applies :func:`train.malloc.tune_glibc_malloc` at start-up (opt-in glibc
settings that keep XLA's large buffers mapped; a trade-off, see that module); the log says what it did.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard events and curves go here.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for jax.distributed (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def _on_tpu_vm() -> bool:
    return any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_ACCELERATOR_TYPE"))


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    # Opt-in glibc settings (train.malloc: big models' steps faster, compiles and small runs slower), applied
    # before XLA's threads allocate.
    malloc = None
    if os.environ.get("LIGHTJAX_TUNE_MALLOC") == "1":
        from train.malloc import tune_glibc_malloc

        malloc = tune_glibc_malloc()
    if FLAGS.config.model.dtype == "float64":  # must be on before the first array is made
        jax.config.update("jax_enable_x64", True)
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif _on_tpu_vm():
        jax.distributed.initialize()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("train").setLevel(logging.INFO)
    if malloc:
        logging.getLogger("train").info("LIGHTJAX_TUNE_MALLOC=1: %s", malloc)
    # Orbax and tfds log every checkpoint/array write at INFO through absl (~1,000 lines in the default run):
    # keep their warnings, drop the chatter that would bury the progress bar. --verbosity=0 brings it back.
    from absl import logging as absl_logging

    if not any(a.split("=")[0] in ("-v", "--v", "--verbosity") for a in sys.argv[1:]):
        absl_logging.set_verbosity(absl_logging.WARNING)

    from train import checks, trainer

    try:
        result = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except checks.ConfigError as e:
        sys.exit(f"config error: {e}")
    except trainer.NonFiniteLossError as e:
        sys.exit(f"training stopped: {e}")
    m = result["metrics"]
    if jax.process_index() == 0:
        parts = [f"step {m.get('step')}"]
        for k in ("train_loss", "eval_top1", "eval_top5", "ema_eval_top1"):
            if k in m:
                parts.append(f"{k} {m[k]:.4f}")
        print("final: " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    app.run(main)
