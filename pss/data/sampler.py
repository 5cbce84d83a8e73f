"""The evaluation sampler: whole batches of an in-order pass, dealt to the ranks.

    sampler = ShardedBatches(len(dataset), batch_size=2, num_replicas=2, rank=0)
    loader = DataLoader(dataset, batch_sampler=sampler, ...)

torch's ``DistributedSampler`` pads the dataset with repeated images so that
every rank gets as many, and deals single images, so a rank's batches hold
other images than one process's batches (and, padded to their own largest
image, give slightly different outputs). Here batch k is items
``[k * B, (k + 1) * B)`` exactly as on one process, and rank r evaluates
batches r, r + W, r + 2W, ...: every image once, in the same batch as on one
process, so W ranks give one process's detections. Ranks may get one batch
more than others, which is fine for evaluation (no collective runs per batch).
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


class ShardedBatches(Sampler[list[int]]):
    """Batches of indices ``0..num_items-1`` in order; this rank's share of them."""

    def __init__(self, num_items: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < num_replicas, got batch_size="
                f"{batch_size}, rank={rank}, num_replicas={num_replicas}"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank

    @property
    def num_batches(self) -> int:
        """Batches of the whole pass, over all ranks."""
        return -(-self.num_items // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.rank, self.num_batches, self.num_replicas):
            yield list(range(k * self.batch_size, min((k + 1) * self.batch_size, self.num_items)))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_batches, self.num_replicas))
