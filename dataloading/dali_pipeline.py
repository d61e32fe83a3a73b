"""The fast pipeline: NVIDIA DALI decodes and cuts every view (GPU operators on CUDA, CPU operators otherwise).

Graph per sample: encoded bytes (external_source, fed from Python so that this module owns the order, sharding
and corrupt-file handling) -> decoders.image ("mixed" = nvJPEG on GPU, "cpu" with device_id=None; SeCo band
files are decoded one by one, stretched with SeCo's table by lookup_table and stacked B4, B3, B2) -> per view:
random_resized_crop -> color_twist (jitter and grayscale folded into one 3x3 colour matrix with per-sample
arithmetic masks; run before the crop when the source has fewer pixels than the view, see dali_graph.py) ->
gaussian_blur and solarize under DALI conditionals -> crop_mirror_normalize (flip, normalise, HWC uint8 -> CHW
float). A `colour_before_crop` group (DINO-TP) runs colour, blur and solarize on the whole image before the crop.

The order of an epoch is a function of (seed, epoch) as in the torch pipeline. The random views come from DALI's
generators, which cannot be re-seeded or moved to a given batch once built; so every epoch gets a fresh pipeline
seeded by (seed, epoch, rank), and the views of an epoch do not depend on the epochs before it. A resume inside
an epoch restores the generators with DALI's own checkpointing (`Pipeline.checkpoint()`, the state after the
batches already returned, saved in the run's checkpoint by `state_dict`): the resumed run sees the same views.

Where it differs from the torchvision reference (`torch_pipeline.py`), all small:
- colour jitter is one affine colour matrix (DALI color_twist: saturation and hue in YIQ, hue as a rotation of the
  I/Q plane, then contrast around mid-grey 128, then brightness, one clamp at the end), where torchvision applies
  the four adjustments in a random order with a clamp to [0, 1] after each, hue as a shift in HSV and contrast
  around the image's mean grey. Without the clamps, and with hue as a YIQ rotation, the four adjustments commute,
  so the order matters only where an intermediate value leaves [0, 255] and through the hue model;
- contrast scales around mid-grey (128), not around the image's mean grey (a uniform shift of
  brightness * (1 - contrast) * (mean - 128) grey levels);
- grayscale is saturation 0 inside the same colour matrix (after the hue shift);
- blur is a true Gaussian of the same sigma (PIL approximates it with box filters);
- a `colour_before_crop` view is mirrored after its crop, not before: the crop's position is uniform and
  symmetric, so the views have the same distribution.

Corrupt files: DALI's decoder fails the whole batch and leaves the pipeline unusable. So (1) the feeder
(dali_feed.py) gives every file a cheap structural check (JPEG/PNG/TIFF signature, JPEG end-of-image marker, PNG
IEND chunk) the first time it is read, and a file that fails is replaced by the next item; (2) if the decoder still
fails, the batches in flight are decoded with PIL to find the culprits, those are marked bad, the DALI pipeline
is rebuilt and the epoch continues from the failed batch. Either way the file is counted in `num_skipped` and
warned about once; with strict=True it raises instead.

DINO-TP (temporal=True) is supported: each sample feeds one image slot per date (`spec.n_dates` acquisitions of
the location drawn with replacement, as the torch pipeline draws them) and each view is cut from its group's date.
"""

from __future__ import annotations

import numpy as np
import torch

from .augment import AugmentationSpec
from .dali_feed import Feeder, planar_note, rgb_files_per_image, typical_pixels
from .seco_stretch import RGB_BANDS, band_lut
from .torch_pipeline import _check_length, check_temporal, epoch_sampler, note_skipped, pipeline_items

_PREFETCH = 2  # DALI prefetch queue depth: batches in flight ahead of the consumer


class DaliPipeline:
    """Same interface as TorchPipeline: iterate for `list[Tensor[B, 3, H_v, W_v]]` on `device`."""

    def __init__(self, source, spec: AugmentationSpec, *, batch_size: int, device="cpu", gpu: bool = False,
                 num_threads: int = 2, seed: int = 0, rank: int = 0, world_size: int = 1, temporal: bool = False,
                 strict: bool = False, feed_workers: int = 0):
        import nvidia.dali  # noqa: F401  (fail here, where build_pipeline can fall back)

        check_temporal(spec, temporal)
        items = pipeline_items(source, temporal)
        self.spec, self.batch_size, self.gpu = spec, batch_size, gpu
        self.device = torch.device(device)
        self.device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        self.num_threads, self.seed, self.rank, self.temporal = max(1, num_threads), seed, rank, temporal
        self.backend = "dali-gpu" if gpu else "dali-cpu"
        self.sampler = epoch_sampler(source, items, temporal, rank=rank, world_size=world_size, seed=seed)
        _check_length(len(self.sampler), batch_size, len(items), world_size)
        if spec.bands:  # multispectral: files read in Python, views drawn there too (dali_ms.py)
            from .dali_ms import MSFeeder
            from .torch_pipeline import band_reader

            self.feeder = MSFeeder(items, self.sampler, batch_size, spec, temporal, seed, strict,
                                   band_reader(source, spec), workers=feed_workers)
            self.source_pixels = 0
        else:
            self.feeder = Feeder(items, self.sampler, batch_size, spec.n_dates, rgb_files_per_image(source, items),
                                 temporal, seed, strict)
            self.source_pixels = typical_pixels(items)
        note = None if spec.bands else planar_note(items)
        self.notes: list[str] = [note] if note else []  # what the trainer writes to train.log once per run
        self.epoch = 0
        self.skipped_files: set[str] = set()
        self._start, self._restore = 0, None  # where the next iteration starts (set_epoch)
        self._rebuilds = 0  # rebuilds in this epoch after a decoder failure
        self._pipe = self._build(0)  # build now: a DALI problem shows up in build_pipeline, which can fall back
        self._fresh = (0, 0)  # (epoch, start) the unused pipeline above was seeded for

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_files | self.feeder.bad)

    def set_epoch(self, epoch: int, start_batch: int = 0, state: dict | None = None) -> None:
        """The next iteration yields batches start_batch, ... of `epoch`. `state`: what `state_dict()` returned at
        that position; with it the views are exactly those of an uninterrupted run. Without it (a checkpoint
        from another world size) the order is the same but the views are drawn afresh, seeded by the position."""
        self.epoch, self._start, self._restore = epoch, start_batch, state or None

    def state_dict(self) -> dict:
        """The DALI generators' state after the batches returned so far in this epoch, and the feeder's
        position and bad-file marks: what `set_epoch(epoch, batch, state)` needs to continue exactly."""
        return dict(dali=self._pipe.checkpoint(), feeder_start=self.feeder.start, rebuilds=self._rebuilds,
                    bad_files=sorted(f for f, ok in self.feeder.ok.items() if not ok), bad=sorted(self.feeder.bad))

    def __len__(self) -> int:
        """Batches in a whole epoch, whatever set_epoch's start_batch."""
        return len(self.sampler) // self.batch_size

    def _build(self, start: int, checkpoint: bytes | None = None):
        from .dali_graph import multiview_pipeline

        n_slots = self.spec.n_dates if self.temporal else 1
        # SeCo band files: SeCo's stretch per band, B4, B3, B2 (seco_stretch.py); RGB files are read as they are.
        band_luts = [band_lut(b).tolist() for b in RGB_BANDS] if self.feeder.files_per_image == 3 else None
        # The seed is a function of where the pipeline starts, so the views of an epoch do not depend on the run's
        # history; a rebuild after a decoder failure gets a new one (it must not repeat the failed batch's draws).
        seed = int(np.random.SeedSequence([self.seed, self.epoch, self.rank, start, self._rebuilds])
                   .generate_state(1)[0]) & 0x7FFFFFFF
        if self.spec.bands:
            from .dali_ms_graph import multispectral_pipeline

            pipe = multispectral_pipeline(self.spec, n_slots=n_slots, source=self.feeder, gpu=self.gpu,
                                          batch_size=self.batch_size, num_threads=self.num_threads,
                                          device_id=self.device_id, seed=seed, prefetch_queue_depth=_PREFETCH,
                                          enable_checkpointing=True, checkpoint=checkpoint)
            pipe.build()
            return pipe
        pipe = multiview_pipeline(self.spec, n_slots=n_slots, files_per_image=self.feeder.files_per_image,
                                  band_luts=band_luts,
                                  source=self.feeder, gpu=self.gpu, source_pixels=self.source_pixels,
                                  batch_size=self.batch_size,
                                  num_threads=self.num_threads, device_id=self.device_id, seed=seed,
                                  prefetch_queue_depth=_PREFETCH, enable_checkpointing=True, checkpoint=checkpoint)
        pipe.build()
        return pipe

    def _start_epoch(self) -> int:
        """Plan the feeder and (re)build the pipeline for the position set by set_epoch; returns the first batch."""
        start, restore = self._start, self._restore
        self._start, self._restore = 0, None
        if restore is not None:  # inside an epoch, with the generators' saved state: continue exactly
            self._rebuilds = restore["rebuilds"]
            self.feeder.ok.update(dict.fromkeys(restore["bad_files"], False))
            self.feeder.bad.update(restore["bad"])
            self.feeder.plan(self.epoch, start=restore["feeder_start"])
            # The restored pipeline also resumes its iteration counter: the feeder keeps its saved start.
            self._pipe = self._build(restore["feeder_start"], checkpoint=restore["dali"])
        else:
            self._rebuilds = 0
            self.feeder.plan(self.epoch, start=start)
            if self._fresh != (self.epoch, start):
                self._pipe = self._build(start)
        self._fresh = None
        return start

    def __iter__(self):
        b = self._start_epoch()
        while b < len(self):
            try:
                outputs = self._pipe.run()
            except Exception as e:  # a file passed the cheap check but the decoder failed on it
                culprits = self.feeder.find_culprits(b)
                if not culprits or self.feeder.strict:
                    what = f" (cannot decode {culprits[0]!r})" if culprits else ""
                    raise RuntimeError(f"DALI pipeline failed at batch {b} of epoch {self.epoch}{what}: {e}") from e
                self.feeder.plan(self.epoch, start=b)
                self._rebuilds += 1
                self._pipe = self._build(b)
                continue
            note_skipped(self.skipped_files, sorted(self.feeder.bad - self.skipped_files))
            self.feeder.in_flight.pop(b, None)
            b += 1
            yield [self._to_torch(o) for o in outputs]
        note_skipped(self.skipped_files, sorted(self.feeder.bad - self.skipped_files))

    def _to_torch(self, tensor_list) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        # A copy into memory torch owns, so a batch stays valid whatever DALI does with its buffers next (see
        # tests/test_data_dali_gpu.py); on CUDA DALI orders the copy after the producing work and before any reuse.
        t = tensor_list.as_tensor()
        if not self.gpu:
            return torch.from_numpy(np.array(t)).to(self.device, non_blocking=True)
        out = torch.empty(t.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out
