"""MindSpore runtime settings that mindpeft applies at import time."""
import os

HOST_BLOCKING_ENV = "MS_DEV_HOST_BLOCKING_RUN"


def tune_cpu_runtime():
    """Run compiled graphs synchronously on the host when MindSpore targets the CPU.

    MindSpore's asynchronous CPU runtime hands every kernel between several threads; on machines with few cores
    those threads wait on each other for whole scheduler ticks (about 4 ms a kernel), which made a jit LoRA step
    3-5x slower than needed. ``MS_DEV_HOST_BLOCKING_RUN=1`` runs the kernels on the calling thread. MindSpore reads
    the variable once, at the first graph it runs, so mindpeft sets it at import; set it yourself (to ``0`` to
    opt out) to override. Other device targets are left alone.
    """
    if HOST_BLOCKING_ENV in os.environ:
        return
    import mindspore as ms

    if ms.get_context("device_target") == "CPU":
        os.environ[HOST_BLOCKING_ENV] = "1"


DATASET_WORKERS_ENV = "MINDPEFT_DATASET_WORKERS"


def tune_dataset_runtime():
    """Give ``mindspore.dataset`` operations one worker thread by default (``MINDPEFT_DATASET_WORKERS``: another
    number, capped at the number of cores; ``0`` keeps MindSpore's own default of one per core, up to 8).

    - Quiet logs: with more than one worker, every batch operation checks the memory use of the whole machine
      (``MemTotal - MemAvailable`` from ``/proc/meminfo``, all processes together) at each epoch end and, above
      80 % (measured on MindSpore 2.10), logs ``Memory consumption is more than 85.3%, which may cause OOM.
      Please reduce num_parallel_workers size ...``: a warning about the machine, not about the pipeline, which for
      tokenised text holds a few MB. With one worker (and no ``per_batch_map``) the check is skipped.
    - Little lost speed: mindpeft's pipelines (``build_dataset`` and the tokenizing ``BaseMapFunction`` maps) run
      Python code, which one thread at a time can run (the GIL), and prefetch while the model trains. Measured on
      2 cores: an epoch of the seq2seq tutorial's 45 batches takes 0.12 s to produce with one worker and 0.09 s
      with two, next to about 5 s of training; on small CPUs more workers mostly compete with the training kernels.
      The tutorials print the same numbers either way.
    - One worker also makes the pipeline strictly sequential.

    Heavy pipelines (image decoding in C++ operations) still get more workers per operation
    (``dataset.map(..., num_parallel_workers=8)``) or globally after importing mindpeft
    (``mindspore.dataset.config.set_num_parallel_workers(8)``).
    """
    value = os.environ.get(DATASET_WORKERS_ENV, "1").strip() or "1"
    try:
        workers = int(value)
    except ValueError:
        raise ValueError(f"{DATASET_WORKERS_ENV} must be a number of workers (0: MindSpore's default), got "
                         f"{value!r}") from None
    if workers < 0:
        raise ValueError(f"{DATASET_WORKERS_ENV} must be >= 0, got {workers}")
    if workers:
        import mindspore.dataset as ds

        # MindSpore refuses more workers than CPU cores
        ds.config.set_num_parallel_workers(min(workers, os.cpu_count() or 1))

