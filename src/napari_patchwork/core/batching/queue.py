"""``Queue``: a bounded, shuffled buffer of patches fed by background loading threads."""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch.utils.data import IterableDataset, Sampler, get_worker_info

from napari_patchwork.core._validation import check_positive_int
from napari_patchwork.core.batching.collate import register_default_collate
from napari_patchwork.core.data.subject import Subject
from napari_patchwork.core.samplers.base import RandomSampler

Transform = Callable[[Subject], Subject]
Prepared = Callable[[int], Iterator[Subject]]  # patches(count) of one loaded subject


def _pretty_bytes(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


class _SubjectLoader:
    """Loads, transforms and prepares subjects in order, at most ``num_workers`` in flight."""

    def __init__(
        self, load: Callable[[int], Prepared], indices: Sequence[int], num_workers: int
    ) -> None:
        self._load = load
        self._indices = iter(indices)
        self._pending: deque[tuple[int, Future[Prepared]]] = deque()
        self._executor = (
            ThreadPoolExecutor(num_workers, thread_name_prefix="patchwork-queue")
            if num_workers > 0
            else None
        )
        for _ in range(num_workers):
            self._submit()

    def _submit(self) -> None:
        index = next(self._indices, None)
        if index is not None and self._executor is not None:
            self._pending.append((index, self._executor.submit(self._load, index)))

    def __iter__(self) -> Iterator[tuple[int, Prepared]]:
        if self._executor is None:
            for index in self._indices:
                yield index, self._load(index)
            return
        while self._pending:
            index, future = self._pending.popleft()
            self._submit()
            yield index, future.result()  # re-raises a worker's exception, traceback intact

    def close(self) -> None:
        if self._executor is not None:
            for _, future in self._pending:
                future.cancel()
            self._pending.clear()
            self._executor.shutdown(wait=True, cancel_futures=True)


class Queue(IterableDataset):  # type: ignore[type-arg]
    """A buffer of patches for stochastic patch-based training.

    Background threads load and transform subjects while patches are consumed; the sampler
    extracts up to ``patches_per_volume`` patches from each, which fill a buffer of at most
    ``max_length`` patches. When the buffer is full (or the subjects run out) it is shuffled
    and emptied, one patch at a time. At most ``num_workers`` subjects are loaded ahead, and a
    subject is released as soon as its patches are drawn.

    Parameters
    ----------
    subjects : sequence of Subject
        The subjects (lazy images are read in the worker threads).
    patch_sampler : callable
        ``patch_sampler(subject)`` yields patches, e.g. a :class:`UniformSampler`.
    max_length : int
        Most patches held in the buffer.
    patches_per_volume : int
        Most patches extracted from each subject.
    num_workers : int
        Loading threads; 0 loads synchronously.
    shuffle_subjects, shuffle_patches : bool
        Shuffle the subject order each epoch / the buffer after each refill (torch's RNG, so
        ``torch.manual_seed`` makes the order reproducible).
    transform : callable, optional
        Applied to each loaded subject before sampling.
    subject_sampler : torch.utils.data.Sampler, optional
        Yields the subject indices of an epoch (e.g. ``DistributedSampler``); it sets the
        order, so ``shuffle_subjects`` must then be False (``ValueError`` otherwise, as
        TorchIO 2).

    Notes
    -----
    Under an outer ``DataLoader`` with workers, each worker takes its own share of the
    subjects, so every patch is yielded once per epoch. An exception raised while loading a
    subject is raised in the consumer with its original traceback; leaving the loop early
    stops the threads.

    Examples
    --------
    >>> import torch
    >>> from napari_patchwork import ScalarImage, Subject, UniformSampler
    >>> subjects = [Subject(t1=ScalarImage(torch.rand(1, 8, 8, 8))) for _ in range(3)]
    >>> queue = Queue(subjects, UniformSampler(None, 4), max_length=4, patches_per_volume=2)
    >>> queue.patches_per_epoch, len(list(queue))
    (6, 6)
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        patch_sampler: Callable[..., Iterator[Subject]],
        max_length: int = 300,
        patches_per_volume: int = 10,
        num_workers: int = 0,
        shuffle_subjects: bool = True,
        shuffle_patches: bool = True,
        transform: Transform | None = None,
        subject_sampler: Sampler[int] | None = None,
    ) -> None:
        register_default_collate()  # a plain DataLoader over the queue collates its patches
        if not hasattr(subjects, "__len__") or not hasattr(subjects, "__getitem__"):
            raise TypeError(f"subjects must be a sequence of Subject, got {type(subjects)}")
        if len(subjects) == 0:
            raise ValueError("subjects is empty")
        if not callable(patch_sampler):
            raise TypeError(
                f"patch_sampler must be a sampler (callable), got {type(patch_sampler)}"
            )
        check_positive_int(max_length, "max_length")
        check_positive_int(patches_per_volume, "patches_per_volume")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {type(transform)}")
        if subject_sampler is not None and shuffle_subjects:
            raise ValueError(
                "shuffle_subjects must be False when a subject_sampler is given (the sampler"
                " sets the order of the subjects); pass shuffle_subjects=False"
            )
        self.subjects = subjects
        self.patch_sampler = patch_sampler
        self.max_length = max_length
        self.patches_per_volume = patches_per_volume
        self.num_workers = num_workers
        self.shuffle_subjects = shuffle_subjects
        self.shuffle_patches = shuffle_patches
        self.transform = transform
        self.subject_sampler = subject_sampler

    # ------------------------------------------------------------------ sizes
    @property
    def num_subjects(self) -> int:
        """Subjects per epoch."""
        if self.subject_sampler is not None:
            return len(self.subject_sampler)  # type: ignore[arg-type]
        return len(self.subjects)

    @property
    def patches_per_epoch(self) -> int:
        """Upper bound of patches per epoch (the sampler may yield fewer)."""
        return self.num_subjects * self.patches_per_volume

    def __len__(self) -> int:
        return self.patches_per_epoch

    @property
    def max_memory(self) -> int:
        """Estimated bytes of the buffer at its largest (from the first subject's images)."""
        patch_size = getattr(self.patch_sampler, "patch_size", None)
        subject = self.subjects[0]
        if patch_size is None:
            voxels = subject.spatial_shape[0] * subject.spatial_shape[1] * subject.spatial_shape[2]
        else:
            voxels = int(patch_size[0]) * int(patch_size[1]) * int(patch_size[2])
        per_patch = sum(
            image.num_channels * voxels * max(image.itemsize, 4) for image in subject.get_images()
        )
        return self.max_length * per_patch

    @property
    def max_memory_pretty(self) -> str:
        """``max_memory`` in human-readable units."""
        return _pretty_bytes(self.max_memory)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Subject]:
        return self._patches(self._subject_indices())

    def _subject_indices(self) -> list[int]:
        info = get_worker_info()
        if self.subject_sampler is not None:
            indices = [int(i) for i in self.subject_sampler]
        elif self.shuffle_subjects:
            generator = None
            if info is not None:  # every worker must draw the same order to shard it
                generator = torch.Generator().manual_seed(info.seed - info.id)
            indices = torch.randperm(len(self.subjects), generator=generator).tolist()
        else:
            indices = list(range(len(self.subjects)))
        if info is not None:
            indices = indices[info.id :: info.num_workers]
        return indices

    def _load(self, index: int) -> Prepared:
        """Load, transform and prepare subject ``index`` (in a loading thread).

        Returns ``patches(count)``: with a random sampler the per-subject work (centre
        tables) is done here, in parallel, and only the draws and crops wait for the consumer,
        which makes them in subject order (reproducible under a seed).
        """
        subject = self.subjects[index]
        if not isinstance(subject, Subject):
            raise TypeError(f"subjects[{index}] must be a Subject, got {type(subject)}")
        loaded = subject.loaded_copy()
        if self.transform is not None:
            loaded = self.transform(loaded)
            if not isinstance(loaded, Subject):
                raise TypeError(f"transform must return a Subject, got {type(loaded)}")
        if isinstance(self.patch_sampler, RandomSampler):
            return self.patch_sampler.prepare(loaded)
        sampler = self.patch_sampler
        return lambda count: itertools.islice(sampler(loaded), count)

    def _patches(self, indices: list[int]) -> Iterator[Subject]:
        loader = _SubjectLoader(self._load, indices, self.num_workers)
        buffer: list[Subject] = []
        try:
            for index, prepared in loader:
                for patch in prepared(self.patches_per_volume):
                    location = patch["patch_location"]
                    patch["patch_location"] = dataclasses.replace(location, subject_index=index)
                    buffer.append(patch)
                    if len(buffer) == self.max_length:
                        yield from self._drain(buffer)
                del prepared
            yield from self._drain(buffer)
        finally:
            loader.close()

    def _drain(self, buffer: list[Subject]) -> Iterator[Subject]:
        if self.shuffle_patches:
            order = torch.randperm(len(buffer)).tolist()
            buffer[:] = [buffer[i] for i in order]
        buffer.reverse()
        while buffer:
            yield buffer.pop()
