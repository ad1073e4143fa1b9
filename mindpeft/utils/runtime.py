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
