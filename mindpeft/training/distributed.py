"""Data parallelism on MindSpore's own engine: the process group that ``msrun`` starts, sharding rows by rank, and
gathering Python objects (evaluation predictions, random-number states) from every rank.

Launch the same script on N workers with::

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --join=True train.py

``msrun`` sets ``MS_ROLE=MS_WORKER`` for each worker; :func:`init_distributed` then calls
``mindspore.communication.init()`` (the CPU backend is "mccl", HCCL on Ascend, NCCL on GPU).
"""
import os
import pickle

import numpy as np
import mindspore as ms
from mindspore import ops


class DistributedContext:
    """``rank`` and ``world_size`` of this process (0 and 1 when it is not part of a group)."""

    def __init__(self, rank=0, world_size=1):
        self.rank = rank
        self.world_size = world_size

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        """Wait until every rank gets here."""
        if self.enabled:
            ops.AllReduce()(ms.Tensor(np.zeros(1, np.float32))).asnumpy()

    def all_gather_object(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled and sent as int32 tensors)."""
        if not self.enabled:
            return [obj]
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        padded = data + b"\0" * (-len(data) % 4)
        sizes = ops.AllGather()(ms.Tensor(np.array([len(data)], np.int32))).asnumpy()
        longest = -(-int(sizes.max()) // 4)
        words = np.zeros(longest, np.int32)
        words[:len(padded) // 4] = np.frombuffer(padded, np.int32)
        gathered = ops.AllGather()(ms.Tensor(words)).asnumpy().reshape(self.world_size, longest)
        return [pickle.loads(gathered[r].tobytes()[:int(sizes[r])]) for r in range(self.world_size)]


def launched_by_msrun():
    """Whether ``msrun`` started this process (a worker, or the scheduler, which runs the same script)."""
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and bool(os.environ.get("MS_WORKER_NUM"))


def init_distributed():
    """The :class:`DistributedContext` of this process: an initialised ``mindspore.communication`` group, or one
    started now under ``msrun``; else a single process. (In ``msrun``'s scheduler process ``init()`` serves the
    workers and ends the process when they are done: the script goes no further there.)"""
    from mindspore.communication import GlobalComm, get_group_size, get_rank, init

    if not GlobalComm.INITED and launched_by_msrun():
        init()
    if not GlobalComm.INITED:
        return DistributedContext()
    return DistributedContext(get_rank(), get_group_size())


def shard_positions(num_rows, rank, world_size):
    """Positions of rank ``rank``'s rows among ``num_rows`` ordered rows: every ``world_size``-th from ``rank``,
    the order wrapped around so that every rank gets the same number (as torch's ``DistributedSampler``). Batch
    ``k`` of every rank together is then batch ``k`` of one process with a ``world_size`` times larger batch."""
    per_rank = -(-num_rows // world_size)
    padded = np.resize(np.arange(num_rows), per_rank * world_size)
    return padded[rank::world_size]


def unshard(parts, num_rows):
    """Inverse of :func:`shard_positions`: per-rank arrays (rows on axis 0, same length) interleaved back into the
    original order and cut to ``num_rows``."""
    if len(parts) == 1:
        return parts[0][:num_rows]
    stacked = np.stack(parts, axis=1)
    return stacked.reshape(-1, *stacked.shape[2:])[:num_rows]
