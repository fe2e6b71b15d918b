"""One trainer for every method, on Hugging Face accelerate.

It only talks to `PromptModel` (host + boosters): the frozen inputs it caches, the batches it
prepares with and the lifecycle hooks it calls are the model's, so adding a method never touches
this file.
bf16 autocast on GPU, fp32 on CPU; gradient accumulation; progress events to a callback and to
``events.jsonl``; cooperative cancel checked every step (a checkpoint is saved first); exact
resume from the last checkpoint; runs under ``accelerate launch`` on several GPUs, where the
processes share the feature-cache fill (`FeatureCache`), agree on stopping through accelerate's
trigger, and score the test split together (`score_split`), each image once.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from specpl.backbone import Backbone, load_backbone
from specpl.bundle import with_options_before_v6
from specpl.checkpoint import load_resume_state, save_resume_state
from specpl.config import MethodConfig, RunConfig, TrainConfig, from_dict, write_json_atomic
from specpl.data import FewShotData, ImageItem, read_unlabeled_folder
from specpl.datasets import read_dataset
from specpl.evaluate import harmonic_mean, metrics_summary
from specpl.events import EventCallback, EventLog
from specpl.factory import build_method, resolve_method_options
from specpl.features import AugmentedViews, FeatureCache, train_transform
from specpl.inference import Predictor, score_split
from specpl.methods import Batch
from specpl.methods.zeroshot import ZeroShot, zero_shot_method
from specpl.model import PromptModel
from specpl.resolve import resolve_run, run_decomposer
from specpl.selection import BASE_NEW_NOTE, Selection, verdict
from specpl.training_plan import epoch_steps, resolved_training

STOP_FILE = "STOP"  # another process asks a run to stop by creating this file in its run dir; the run removes it


@dataclass
class TrainResult:
    status: str  # "finished", "cancelled", or "paused" (its deadline came first; resume continues it)
    run_dir: Path
    metrics: dict[str, Any]
    model: PromptModel


# Estimates until bench/gpu.sh measures them on the GPU at hand (H100/H200, ViT-B/16): the first
# compiled steps cost about a minute, and each later step saves about 50 ms against eager (55 -> 3 ms).
COMPILE_SECONDS_ESTIMATE = 60.0
COMPILE_SAVING_PER_STEP_ESTIMATE = 0.05


def resolve_compile(setting: str, device: torch.device, total_steps: int) -> tuple[bool, str]:
    """Whether to compile the step, and why. ``auto`` compiles on a GPU when the run's steps earn
    back the compile time; never on a CPU, where inductor saves little per step (bench/RESULTS.md)."""
    if setting in ("on", "off"):
        return setting == "on", f"train.compile={setting!r}"
    if device.type != "cuda":
        return False, "auto: not on a CPU (compiling costs more than it saves there)"
    pays_after = math.ceil(COMPILE_SECONDS_ESTIMATE / COMPILE_SAVING_PER_STEP_ESTIMATE)
    if total_steps >= pays_after:
        return True, f"auto: {total_steps} steps earn back the compile time (about {pays_after} steps)"
    return False, f"auto: {total_steps} steps are fewer than the {pays_after} that would earn back the compile time"


def compiled_step(module: torch.nn.Module, compile: str, device: torch.device) -> torch.nn.Module:
    """The training forward (and, through AOTAutograd, its backward) under torch.compile when asked:
    CUDA graphs on a GPU ("reduce-overhead"), plain inductor on a CPU. Compiled here rather than
    through accelerate's dynamo plugin, whose setting is process-global and would leak between
    runs that share a process (the app's tests, the world benchmark)."""
    if compile != "on":
        return module
    return torch.compile(module, mode="reduce-overhead" if device.type == "cuda" else "default")


def resolve_precision(setting: str) -> str:
    """The run's precision: ``auto`` is bf16 on a GPU and fp32 on a CPU."""
    if setting == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    if setting not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be 'auto', 'fp32' or 'bf16', got {setting!r}")
    return setting


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        callback: EventCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        backbone: Backbone | None = None,
        decomposer: torch.nn.Module | None = None,
        progress_bar: bool = True,
        log_every_steps: int | None = None,
        deadline: float | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.events = EventLog(self.run_dir / "events.jsonl", callback)
        self._should_stop = should_stop or (lambda: False)
        self._backbone = backbone
        self._decomposer = decomposer
        self.progress_bar = progress_bar
        self.log_every_steps = (
            max(1, log_every_steps) if log_every_steps else None
        )  # None: every step on a CPU, every 10th on a GPU
        self.selection: Selection | None = None
        self._zero_shot_val: float | None = None
        # a `time.time()` after which no step starts: the run saves a checkpoint and returns "paused"
        # (a time-bounded GPU call, e.g. one ZeroGPU slice; the next call resumes it)
        self.deadline = deadline

    def should_stop(self) -> bool:
        return self._should_stop() or (self.run_dir / STOP_FILE).exists()

    def fit(self, resume: bool = False) -> TrainResult:
        self._started = False
        try:
            return self._fit(resume)
        except BaseException as exc:
            if self._started:  # bad input fails before the run dir is touched
                self.events.emit("status", status="failed", error=f"{type(exc).__name__}: {exc}")
            raise

    def _fit(self, resume: bool) -> TrainResult:
        recorded = recorded_run(self.run_dir) if resume else None
        if recorded is not None:  # a resumed run keeps the settings it started with
            self.config = with_recorded_settings(self.config, recorded)
        cfg = self.config
        accelerator = Accelerator(
            # precision is this run's own autocast, not accelerate's: its setting is process-global and
            # would refuse a second run of another precision in the same process (the app, benchmarks)
            mixed_precision="no",
            gradient_accumulation_steps=cfg.train.grad_accum_steps,
            cpu=not torch.cuda.is_available(),
        )
        set_seed(cfg.train.seed)
        precision = resolve_precision(cfg.train.precision)
        device_type = accelerator.device.type
        # frozen inputs are computed under it too (a bf16-held CLIP)
        self._autocast = lambda: torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
        main = accelerator.is_main_process
        if not main:
            self.events.path = None  # one writer: the main process
        resolve_method_options(cfg.method)  # bad method options fail here, before any data is read
        # validation is held out of the training images, never the test split (`specpl.resolve`)
        resolved = resolve_run(cfg, read_dataset(cfg.data))
        data, train, template = resolved.data, resolved.training, resolved.template
        backbone = self._backbone or load_backbone(cfg.backbone, device=accelerator.device)
        if precision == "bf16":
            backbone = frozen_in_bf16(backbone)
        decomposer_config, decomposer_reason = run_decomposer(cfg, backbone.image_size)
        model = build_method(
            cfg.method, backbone, data.classnames, template, decomposer_config, self._decomposer, cfg.data.dataset
        )
        if cfg.data.unlabeled_root:
            if model.host.learns_from_labels:
                raise ValueError(
                    f"data.unlabeled_root: host {model.host.name!r} learns from labels; "
                    "only a label-free host (caspl-boost) trains on an unlabeled folder"
                )
            data = dataclasses.replace(data, train=read_unlabeled_folder(cfg.data.unlabeled_root))
            if recorded is None:
                train = resolved_training(cfg, len(data.train))
        frozen_inputs = model.frozen_inputs()  # builds the decomposer only if a component needs one
        uses_decomposer = bool(model.context.built_decomposer)
        model.to(accelerator.device)
        self._started = True
        record = {
            **cfg.to_dict(),
            "template": template,
            "decomposer": dataclasses.asdict(decomposer_config) if uses_decomposer else None,
            "decomposer_reason": decomposer_reason if uses_decomposer else None,
            "backbone": dataclasses.asdict(backbone.config),
            "resolved_method_options": model.resolved_options(),
            "resolved_train": train,
            "preset": cfg.method.preset,
            # where each value of a paper run comes from (empty for the default preset)
            "sources": recorded.get("sources", {}) if recorded is not None else resolved.sources,
        }
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.events.emit("status", status="running", resume=resume)
            self.events.emit("data", **data.summary())
            if uses_decomposer:
                self.events.emit("decomposer", name=decomposer_config.name, reason=decomposer_reason)
            write_json_atomic(self.run_dir / "config.json", record)

        min_scale = float(train["crop_scale"])
        views = AugmentedViews(
            train_transform(train["augment"], backbone, min_scale), backbone.preprocess_eval, cfg.train.seed
        )
        cache = FeatureCache(
            views,
            frozen_inputs,
            device=accelerator.device,
            enabled=cfg.train.cache_features,
            workers=cfg.train.num_workers,
            processes=PartialState(),
            on_progress=lambda done, total: (
                self.events.emit("phase", phase="frozen features", done=done, total=total) if main else None
            ),
        )
        params = [p for p in model.parameters() if p.requires_grad]
        epochs = int(train["epochs"]) if params else 0  # nothing to learn (zero-shot): evaluate and export only
        batch_size = int(train["batch_size"])
        steps_per_epoch, drop_last = epoch_steps(
            len(data.train), batch_size, bool(train["drop_last"]), accelerator.num_processes, cfg.train.grad_accum_steps
        )
        total_steps = max(1, epochs * steps_per_epoch)
        optimizer = _build_optimizer(params, train) if params else None
        counters = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
        checkpoint_dir = self.run_dir / "checkpoint"
        if resume and (checkpoint_dir / "state.safetensors").exists() and optimizer is not None:
            model_state, counters, kept_states = load_resume_state(checkpoint_dir, optimizer)
            model.load_learned_state_dict(model_state)
            kept = counters.pop("selection", None)
            self.selection = Selection.from_record(kept, kept_states) if kept else None
            self.events.emit("resumed", **counters)
        elif epochs:
            wanted = max((c.wants_first_batches() for c in model.components), default=0)
            model.prepare(self._first_batches(data, cache, views, wanted, batch_size, train, accelerator.device))
        if epochs and counters["global_step"] == 0:
            self.selection = self._start_selection(model, data, template, backbone, train, accelerator)

        lr_at = _lr_schedule(train, steps_per_epoch, total_steps)
        multi_process = accelerator.num_processes > 1
        if multi_process and self.deadline is not None:  # processes' clocks would disagree on the last step
            raise ValueError("a training deadline is for one process; a multi-GPU run stops through STOP")
        wrapped, optimizer = accelerator.prepare(model, optimizer) if optimizer else (model, None)
        compiled, compile_reason = resolve_compile(
            cfg.train.compile, accelerator.device, total_steps - counters["global_step"]
        )
        if optimizer:
            self.events.emit("compile", compiled=compiled, reason=compile_reason)
            wrapped = compiled_step(wrapped, "on" if compiled else "off", accelerator.device)
        log_every = self.log_every_steps or (
            1 if accelerator.device.type == "cpu" else 10
        )  # a logged step reads the loss: a host sync

        started = time.time()
        images_seen = 0
        start_step = counters["global_step"]
        bar = tqdm(
            total=total_steps,
            initial=counters["global_step"],
            disable=not (main and self.progress_bar),
            desc="train",
            unit="step",
        )
        for epoch in range(counters["epoch"], epochs):
            model.epoch, model.epochs = epoch, epochs
            loader = accelerator.prepare_data_loader(
                self._loader(data, cache, views, epoch, batch_size, train, model, drop_last)
            )
            if counters["step_in_epoch"]:
                loader = accelerator.skip_first_batches(loader, counters["step_in_epoch"] * cfg.train.grad_accum_steps)
            wrapped.train()
            for raw in loader:
                stop = self.should_stop()  # checked before each step, so a stop sent during setup is honoured
                if multi_process:  # every process must agree, or one waits forever in the next collective
                    if stop:
                        accelerator.set_trigger()
                    stop = accelerator.check_trigger()
                if stop:
                    result = self._end_early("cancelled", accelerator, model, optimizer, counters, epoch, bar)
                    (self.run_dir / STOP_FILE).unlink(missing_ok=True)  # the request is consumed by the run it stopped
                    return result
                if self.deadline is not None and time.time() >= self.deadline:
                    return self._end_early("paused", accelerator, model, optimizer, counters, epoch, bar)
                batch = _to_batch(raw, accelerator.device)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(counters["global_step"], epoch)
                with accelerator.accumulate(wrapped):
                    with self._autocast():
                        losses = wrapped(batch)
                        total = sum(losses.values())
                    accelerator.backward(total)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if not accelerator.sync_gradients:
                        continue
                counters["global_step"] += 1
                counters["step_in_epoch"] += 1
                images_seen += len(batch.labels) * accelerator.num_processes * cfg.train.grad_accum_steps
                bar.update(1)
                if main and (counters["global_step"] % log_every == 0 or counters["global_step"] == total_steps):
                    elapsed = time.time() - started
                    rate = images_seen / max(elapsed, 1e-9)
                    done = counters["global_step"]
                    eta = elapsed / max(done - start_step, 1) * (total_steps - done)
                    terms = {k: float(v.detach()) for k, v in losses.items()}
                    bar.set_postfix(loss=f"{float(total.detach()):.4f}")
                    self.events.emit(
                        "step",
                        step=done,
                        total_steps=total_steps,
                        epoch=epoch + 1,
                        epochs=epochs,
                        losses=terms,
                        loss=float(total.detach()),
                        lr=optimizer.param_groups[0]["lr"],
                        images_per_s=rate,
                        eta_s=eta,
                    )
            counters["step_in_epoch"] = 0
            model.on_epoch_end(epoch + 1, epochs)
            self.events.emit("epoch", epoch=epoch + 1, epochs=epochs, step=counters["global_step"])
            last = epoch + 1 == epochs  # the last epoch is scored after `finalise` (PromptSRC's GPA changes it)
            every = cfg.train.eval_every_epochs
            if data.val and not last and (self.selection is not None or (every and (epoch + 1) % every == 0)):
                self._score_epoch(model, data, epoch + 1, epochs, counters["global_step"], accelerator)
            if (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 and epoch + 1 < epochs:
                self._checkpoint(accelerator, model, optimizer, counters, epoch + 1, 0)
        bar.close()
        final_val = None
        if epochs:
            model.finalise()
            if data.val:
                final_val = self._score_epoch(model, data, epochs, epochs, counters["global_step"], accelerator)
        restore = self.selection.settle(epochs) if self.selection is not None and epochs else None
        if restore is not None:
            model.load_learned_state_dict(restore)
        kept_zero_shot = self.selection is not None and self.selection.kept_zero_shot
        trained_method = model.label() if kept_zero_shot else None  # what the bundle stands in for
        if kept_zero_shot:  # exported in place of every state of the run (`specpl.selection`, rule 4)
            model = build_method(
                zero_shot_method(template),
                backbone,
                data.classnames,
                template,
                decomposer_config if uses_decomposer else None,
                model.context.built_decomposer,
            )
        if restore is not None or kept_zero_shot:
            self.events.emit(
                "selected",
                epoch=self.selection.kept_epoch,
                accuracy=self.selection.kept_accuracy,
                zero_shot=kept_zero_shot,
            )
        accelerator.wait_for_everyone()
        with self._autocast():
            metrics = self._evaluate(
                model, data, cfg, accelerator, template, backbone, train, kept_zero_shot
            )  # every process: the same metrics
        if epochs:
            metrics["selection"] = self.selection.summary(epochs) if self.selection is not None else None
            metrics["verdict"] = verdict(self.selection, epochs, train["select"], self._zero_shot_val, final_val)
            if self.selection is not None and cfg.data.subsample == "base":
                metrics["validation_note"] = BASE_NEW_NOTE
        if main:
            summary = metrics_summary(metrics)
            run = {
                "train": train,
                "data": dataclasses.asdict(cfg.data),
                "metrics": summary,
                "decomposer_reason": record["decomposer_reason"],
                **({"trained_method": trained_method} if trained_method else {}),
            }
            model.save_bundle(self.run_dir / "model", run)
            write_json_atomic(self.run_dir / "metrics.json", metrics)
            self.events.emit("eval", **summary)
            self.events.emit("status", status="finished", metrics=summary)
            if self.progress_bar and metrics.get("verdict"):
                tqdm.write(
                    " ".join(filter(None, (metrics["verdict"], metrics.get("validation_note")))), file=sys.stderr
                )
        accelerator.wait_for_everyone()  # every process returns once the bundle and metrics are on disk
        return TrainResult("finished", self.run_dir, metrics, model)

    def _end_early(
        self,
        status: str,
        accelerator: Accelerator,
        model: PromptModel,
        optimizer: Any,
        counters: dict[str, int],
        epoch: int,
        bar: tqdm,
    ) -> TrainResult:
        """A stop ("cancelled") or the deadline ("paused") came first: save where to continue."""
        self._checkpoint(accelerator, model, optimizer, counters, epoch, counters["step_in_epoch"])
        bar.close()
        self.events.emit("status", status=status, step=counters["global_step"])
        return TrainResult(status, self.run_dir, {}, model)

    def _validate(self, predictor: Predictor, data: FewShotData, accelerator: Accelerator) -> tuple[float, float]:
        """(accuracy, cross-entropy) on the validation images."""
        with self._autocast():
            scores = score_split(predictor, data.val, accelerator, workers=self.config.train.num_workers)
        return scores["accuracy"], scores["loss"]

    def _start_selection(
        self,
        model: PromptModel,
        data: FewShotData,
        template: str,
        backbone: Backbone,
        train: dict[str, Any],
        accelerator: Accelerator,
    ) -> Selection | None:
        """Zero-shot CLIP's and the initial state's validation accuracy, before the first step; the
        initial state is the first candidate when the run selects on validation."""
        if not data.val:
            self._zero_shot_val = None
            return None
        zero_shot = Predictor.zero_shot(backbone, data.classnames, template, device=accelerator.device)
        self._zero_shot_val, zero_shot_loss = self._validate(zero_shot, data, accelerator)
        initial, loss = self._validate(Predictor(model, device=accelerator.device), data, accelerator)
        model.train()
        self.events.emit(
            "val",
            epoch=0,
            epochs=int(train["epochs"]),
            step=0,
            accuracy=initial,
            loss=loss,
            zero_shot=self._zero_shot_val,
            split="val",
        )
        if train["select"] != "val":
            return None
        selection = Selection(
            len(data.val),
            self._zero_shot_val,
            zero_shot_loss=zero_shot_loss if model.host.replaceable_by_zero_shot else None,
        )
        selection.offer(0, initial, model.learned_state_dict(), loss)
        return selection

    def _score_epoch(
        self, model: PromptModel, data: FewShotData, epoch: int, epochs: int, step: int, accelerator: Accelerator
    ) -> float:
        """The validation accuracy after `epoch`, offered to the selection when the run selects."""
        accuracy, loss = self._validate(Predictor(model, device=accelerator.device), data, accelerator)
        model.train()
        best = (
            self.selection.offer(epoch, accuracy, model.learned_state_dict(), loss)
            if self.selection is not None
            else None
        )
        self.events.emit(
            "val", epoch=epoch, epochs=epochs, step=step, accuracy=accuracy, loss=loss, split="val", best=best
        )
        return accuracy

    def _view(self, epoch: int, train: dict[str, Any]) -> int:
        """The augmentation view of an epoch: a fresh one each epoch, or cycling over the cap."""
        cap = train["max_cached_views"]
        return epoch % cap if cap else epoch

    def _loader(
        self,
        data: FewShotData,
        cache: FeatureCache,
        views: AugmentedViews,
        epoch: int,
        batch_size: int,
        train: dict[str, Any],
        model: PromptModel,
        drop_last: bool,
    ) -> DataLoader:
        """This epoch's batches: its view of every image, in a seeded order."""
        view = self._view(epoch, train)
        items = [data.train[i] for i in self._epoch_order(len(data.train), epoch)]
        with self._autocast():
            frozen = cache.get(items, view)
        dataset = _EpochDataset(items, frozen, views if model.needs_image_grad else None, view)
        # its own generator: creating the iterator must not draw from the global RNG, or a resumed
        # run would see different counterfactual permutations than an uninterrupted one
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.config.train.num_workers,
            generator=torch.Generator().manual_seed(epoch),
            pin_memory=torch.cuda.is_available(),
        )

    def _first_batches(
        self,
        data: FewShotData,
        cache: FeatureCache,
        views: AugmentedViews,
        wanted: int,
        batch_size: int,
        train: dict[str, Any],
        device: torch.device,
    ) -> list[Batch]:
        """The first `wanted` training batches' frozen inputs, in training order (continuing into
        later epochs' views when one epoch has fewer), for `PromptModel.prepare`."""
        batches: list[Batch] = []
        epoch = 0
        while len(batches) < wanted and data.train and epoch < wanted:
            items = [data.train[i] for i in self._epoch_order(len(data.train), epoch)]
            with self._autocast():
                frozen = cache.get(items, self._view(epoch, train))
            labels = torch.tensor([item.label for item in items])
            for start in range(0, len(items), batch_size):
                if len(batches) == wanted:
                    break
                rows = slice(start, start + batch_size)
                batches.append(
                    Batch(labels[rows].to(device), frozen={k: v[rows].to(device) for k, v in frozen.items()})
                )
            epoch += 1
        return batches

    def _epoch_order(self, count: int, epoch: int) -> list[int]:
        """The seeded sample order of an epoch (the same in every process and after a resume)."""
        return torch.randperm(
            count, generator=torch.Generator().manual_seed(self.config.train.seed * 100_003 + epoch)
        ).tolist()

    def _checkpoint(
        self,
        accelerator: Accelerator,
        model: PromptModel,
        optimizer: Any,
        counters: dict[str, int],
        epoch: int,
        step_in_epoch: int,
    ) -> None:
        """Save where to continue: (epoch, step inside it). The optimizer is unwrapped from accelerate."""
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and optimizer is not None:
            state = {**counters, "epoch": epoch, "step_in_epoch": step_in_epoch}
            selection = self.selection
            if selection is not None:
                state["selection"] = selection.to_record()
            kept = selection.saved_states() if selection is not None else {}
            save_resume_state(
                self.run_dir / "checkpoint",
                model.learned_state_dict(),
                optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
                state,
                kept,
            )
            self.events.emit("checkpoint", **state)

    def _evaluate(
        self,
        model: PromptModel,
        data: FewShotData,
        cfg: RunConfig,
        accelerator: Accelerator,
        template: str,
        backbone: Backbone,
        train: dict[str, Any],
        kept_zero_shot: bool = False,
    ) -> dict[str, Any]:
        """The test split's metrics (and, for a base run, the new classes' and the HM), scored by
        every process together; a run that selects on validation also scores zero-shot CLIP with
        the run's template on the same images, and the gain over it (none when `kept_zero_shot`:
        the exported model is zero-shot CLIP)."""
        predictor = Predictor(model, device=accelerator.device)
        metrics = self._test_metrics(predictor, data, cfg, accelerator)
        if train["select"] == "val" and (model.host.name != ZeroShot.name or kept_zero_shot):
            zero_shot = (
                metrics
                if kept_zero_shot
                else self._test_metrics(
                    Predictor.zero_shot(backbone, data.classnames, template, device=accelerator.device),
                    data,
                    cfg,
                    accelerator,
                )
            )
            headline = "hm" if "hm" in metrics else "accuracy"
            metrics["zero_shot"] = {k: zero_shot[k] for k in ("accuracy", "base", "new", "hm") if k in zero_shot}
            metrics["gain_over_zero_shot"] = metrics[headline] - zero_shot[headline]
        return metrics

    def _test_metrics(
        self, predictor: Predictor, data: FewShotData, cfg: RunConfig, accelerator: Accelerator
    ) -> dict[str, Any]:
        metrics = score_split(predictor, data.test, accelerator, workers=cfg.train.num_workers)
        if cfg.data.subsample == "base":
            new = read_dataset(dataclasses.replace(cfg.data, subsample="new"))
            predictor.set_classnames(new.classnames, novel=True)
            new_metrics = score_split(predictor, new.test, accelerator, workers=cfg.train.num_workers)
            predictor.set_classnames(data.classnames)
            metrics.update(
                base=metrics["accuracy"],
                new=new_metrics["accuracy"],
                hm=harmonic_mean(metrics["accuracy"], new_metrics["accuracy"]),
            )
        return metrics


def recorded_run(run_dir: Path) -> dict[str, Any] | None:
    """The run record (config.json) a run wrote when it started, if it has one with its resolved
    settings (runs written before they were recorded resolve them again)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return record if "resolved_train" in record and "resolved_method_options" in record else None


def with_recorded_settings(config: RunConfig, record: dict[str, Any]) -> RunConfig:
    """`config` with the method and training settings a run recorded when it started: its preset,
    every component's options as built, and its resolved training settings (all explicit, so they
    resolve to themselves)."""
    method = MethodConfig(
        host=record["method"]["host"],
        boosters=list(record["method"]["boosters"]),
        options=with_options_before_v6(record["resolved_method_options"]),
        preset=record.get("preset", record["method"].get("preset", "default")),
    )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    train = from_dict(TrainConfig, {k: v for k, v in record["resolved_train"].items() if k in known})
    return dataclasses.replace(config, method=method, train=train, template=record.get("template", config.template))


class _EpochDataset(Dataset):
    """One epoch's samples as dicts: label, cached frozen features, and the image itself only when
    the host needs gradients through the image tower."""

    def __init__(
        self, items: list[ImageItem], frozen: dict[str, torch.Tensor], views: AugmentedViews | None, view: int
    ) -> None:
        self.items, self.frozen, self.views, self.view = items, frozen, views, view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = {name: value[index] for name, value in self.frozen.items()}
        sample["labels"] = torch.tensor(self.items[index].label)
        if self.views is not None:
            sample["images"] = self.views.load(self.items[index].path, self.view)
        return sample


def _to_batch(sample: dict[str, torch.Tensor], device: torch.device) -> Batch:
    images = sample.get("images")
    frozen = {k: v.to(device, non_blocking=True) for k, v in sample.items() if k not in ("labels", "images")}
    return Batch(
        labels=sample["labels"].to(device, non_blocking=True),
        images=None if images is None else images.to(device, non_blocking=True),
        frozen=frozen,
    )


def frozen_in_bf16(backbone: Backbone) -> Backbone:
    """The run's frozen CLIP held once in bf16 (a copy: the caller's stays as it was), so autocast
    has no frozen matrix to re-cast each step; the learned tensors stay fp32, and so do the layer
    norms, which autocast runs in fp32 anyway (and which the CPU kernels need in the input's dtype),
    and the logit scale: exp of its bf16 copy is 99.0 where CLIP's is 100."""
    if next(backbone.model.parameters()).dtype == torch.bfloat16:
        return backbone
    model = copy.deepcopy(backbone.model).to(torch.bfloat16)
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    for name in ("logit_scale", "logit_bias"):
        if isinstance(getattr(model, name, None), torch.nn.Parameter):
            getattr(model, name).data = getattr(backbone.model, name).detach().float().clone()
    return dataclasses.replace(backbone, model=model)


def _build_optimizer(params: list[torch.nn.Parameter], train: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD or AdamW over the learned tensors with a multi-tensor update: fused kernels on a GPU,
    foreach (one kernel per operation for all parameters) elsewhere."""
    fused = all(p.device.type == "cuda" for p in params)
    kernels = {"fused": True} if fused else {"foreach": True}
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"], **kernels
        )
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"], **kernels)
    raise ValueError(f"unknown optimizer {train['optimizer']!r}; use 'sgd' or 'adamw'")


def _lr_schedule(train: dict[str, Any], steps_per_epoch: int, total_steps: int) -> Callable[[int, int], float]:
    """The learning rate as a pure function of the step (so resume is exact): a constant warm-up
    lr for `warmup_epochs`, then cosine decay.

    ``epoch`` (the reference, Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=epochs)
    stepped after each epoch): epoch e >= w trains at lr * (1 + cos(pi (e - w) / E)) / 2.
    ``step``: the same curve stepped every step, from the base lr down to zero at the last step."""
    warmup_epochs = train["warmup_epochs"] if train["epochs"] > train["warmup_epochs"] else 0
    warmup = steps_per_epoch * warmup_epochs
    per_epoch = train["schedule"] == "epoch"

    def lr_at(step: int, epoch: int) -> float:
        if per_epoch:
            if epoch < warmup_epochs:
                return train["warmup_lr"]
            return train["lr"] * 0.5 * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max(1, train["epochs"])))
        if step < warmup:
            return train["warmup_lr"]
        return train["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return lr_at
