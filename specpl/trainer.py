"""One trainer for every method, on Hugging Face accelerate.

It only talks to `PromptModel` (host + boosters), so adding a method never touches this file.
bf16 autocast on GPU, fp32 on CPU; gradient accumulation; progress events to a callback and to
``events.jsonl``; cooperative cancel checked every step (a checkpoint is saved first); exact
resume from the last checkpoint; runs under ``accelerate launch`` on several GPUs.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from specpl.backbone import Backbone, load_backbone
from specpl.checkpoint import load_resume_state, save_resume_state, versions, write_bundle
from specpl.config import RunConfig, write_json_atomic
from specpl.data import FewShotData, ImageItem, read_fewshot_folder
from specpl.evaluate import harmonic_mean
from specpl.events import EventCallback, EventLog
from specpl.features import AugmentedViews, BandFeaturizer, FeatureCache
from specpl.inference import Predictor
from specpl.methods import HOSTS, Batch, PromptModel, build_method, resolve_method_options
from specpl.model_card import render_model_card

STOP_FILE = "STOP"  # another process asks a run to stop by creating this file in its run dir; the run removes it


@dataclass
class TrainResult:
    status: str  # "finished" or "cancelled"
    run_dir: Path
    metrics: dict[str, Any]
    model: PromptModel


def compiled_step(module: torch.nn.Module, compile: str, device: torch.device) -> torch.nn.Module:
    """The training forward (and, through AOTAutograd, its backward) under torch.compile when asked:
    CUDA graphs on a GPU ("reduce-overhead"), plain inductor on a CPU. Compiled here rather than
    through accelerate's dynamo plugin, whose setting is process-global and would leak between
    runs that share a process (the app's tests, the world benchmark)."""
    if compile == "off":
        return module
    return torch.compile(module, mode="reduce-overhead" if device.type == "cuda" else "default")


def resolved_training(config: RunConfig) -> dict[str, Any]:
    """The run's optimisation settings: explicit values, else the host's published defaults."""
    defaults = HOSTS.get(config.method.host).training_defaults
    train = dataclasses.asdict(config.train)
    for key in ("epochs", "batch_size", "lr", "optimizer"):
        if train[key] is None:
            train[key] = defaults[key]
    return train


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
        log_every_steps: int = 1,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.events = EventLog(self.run_dir / "events.jsonl", callback)
        self._should_stop = should_stop or (lambda: False)
        self._backbone = backbone
        self._decomposer = decomposer
        self.progress_bar = progress_bar
        self.log_every_steps = max(1, log_every_steps)

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
        cfg = self.config
        train = resolved_training(cfg)
        precision = cfg.train.precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "fp32"
        accelerator = Accelerator(
            mixed_precision={"fp32": "no", "bf16": "bf16"}[precision], gradient_accumulation_steps=cfg.train.grad_accum_steps,
            cpu=not torch.cuda.is_available(),
        )
        set_seed(cfg.train.seed)
        main = accelerator.is_main_process
        if not main:
            self.events.path = None  # one writer: the main process
        method_options = resolve_method_options(cfg.method)
        data = read_fewshot_folder(cfg.data.root, cfg.data.shots, cfg.data.seed, cfg.data.split_ratio, cfg.data.subsample)
        backbone = self._backbone or load_backbone(cfg.backbone, device=accelerator.device)
        needs_bands = any(name != cfg.method.host and _booster_needs_bands(name) for name in method_options)
        band_featurizer = None
        if needs_bands:
            from specpl.bands import build_decomposer

            cfg.decomposer = dataclasses.replace(cfg.decomposer, image_size=cfg.decomposer.image_size or backbone.image_size)
            decomposer = self._decomposer or build_decomposer(cfg.decomposer, device=accelerator.device)
            band_featurizer = BandFeaturizer(decomposer, backbone.normalization, cfg.decomposer.image_size).to(accelerator.device)
        model = build_method(cfg.method, backbone, data.classnames, band_stat_dim=band_featurizer.decomposer.stat_dim if band_featurizer else None)
        model.to(accelerator.device)
        self._started = True
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.events.emit("status", status="running", resume=resume)
            self.events.emit("data", **data.summary())
            write_json_atomic(self.run_dir / "config.json", {**cfg.to_dict(), "backbone": dataclasses.asdict(backbone.config), "resolved_method_options": method_options, "resolved_train": train})

        views = AugmentedViews(backbone.preprocess_train if cfg.train.augment else backbone.preprocess_eval, backbone.preprocess_eval, cfg.train.seed)
        cache = FeatureCache(
            views,
            encode_image=None if model.needs_image_grad else model.host.encode_image,
            band_featurizer=band_featurizer,
            device=accelerator.device,
            enabled=cfg.train.cache_features,
            on_progress=lambda done, total: self.events.emit("phase", phase="frozen features", done=done, total=total) if main else None,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        epochs = int(train["epochs"]) if params else 0  # nothing to learn (zero-shot): evaluate and export only
        steps_per_epoch = math.ceil(math.ceil(len(data.train) / train["batch_size"]) / accelerator.num_processes / cfg.train.grad_accum_steps)
        total_steps = max(1, epochs * steps_per_epoch)
        optimizer = _build_optimizer(params, train) if params else None
        counters = {"epoch": 0, "step_in_epoch": 0, "global_step": 0}
        checkpoint_dir = self.run_dir / "checkpoint"
        if resume and (checkpoint_dir / "state.safetensors").exists() and optimizer is not None:
            model_state, counters = load_resume_state(checkpoint_dir, optimizer)
            model.load_learned_state_dict(model_state)
            self.events.emit("resumed", **counters)
        elif needs_bands:
            first_epoch = [data.train[i] for i in self._epoch_order(len(data.train), 0)]
            first = cache.get(first_epoch[: train["batch_size"] * 10], view=0)
            batches = list(zip(first["low"].split(train["batch_size"]), first["high"].split(train["batch_size"])))
            for booster in model.boosters.values():
                booster.prepare([(lo.to(accelerator.device), hi.to(accelerator.device)) for lo, hi in batches])

        lr_at = _lr_schedule(train, steps_per_epoch, total_steps)
        wrapped, optimizer = accelerator.prepare(model, optimizer) if optimizer else (model, None)
        wrapped = compiled_step(wrapped, cfg.train.compile, accelerator.device) if optimizer else wrapped

        started = time.time()
        images_seen = 0
        start_step = counters["global_step"]
        bar = tqdm(total=total_steps, initial=counters["global_step"], disable=not (main and self.progress_bar), desc="train", unit="step")
        for epoch in range(counters["epoch"], epochs):
            loader = accelerator.prepare_data_loader(self._loader(data, cache, views, epoch, train["batch_size"], cfg.train.max_cached_views, model))
            if counters["step_in_epoch"]:
                loader = accelerator.skip_first_batches(loader, counters["step_in_epoch"] * cfg.train.grad_accum_steps)
            wrapped.train()
            for raw in loader:
                if self.should_stop():  # checked before each step, so a stop sent during setup is honoured
                    self._checkpoint(accelerator, model, optimizer, counters, epoch, counters["step_in_epoch"])
                    bar.close()
                    (self.run_dir / STOP_FILE).unlink(missing_ok=True)  # the request is consumed by the run it stopped
                    self.events.emit("status", status="cancelled", step=counters["global_step"])
                    return TrainResult("cancelled", self.run_dir, {}, model)
                batch = _to_batch(raw)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(counters["global_step"])
                with accelerator.accumulate(wrapped):
                    with accelerator.autocast():
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
                if main and (counters["global_step"] % self.log_every_steps == 0 or counters["global_step"] == total_steps):
                    elapsed = time.time() - started
                    rate = images_seen / max(elapsed, 1e-9)
                    done = counters["global_step"]
                    eta = elapsed / max(done - start_step, 1) * (total_steps - done)
                    terms = {k: float(v.detach()) for k, v in losses.items()}
                    bar.set_postfix(loss=f"{float(total.detach()):.4f}")
                    self.events.emit(
                        "step", step=done, total_steps=total_steps, epoch=epoch + 1, epochs=epochs, losses=terms,
                        loss=float(total.detach()), lr=optimizer.param_groups[0]["lr"], images_per_s=rate, eta_s=eta,
                    )
            counters["step_in_epoch"] = 0
            self.events.emit("epoch", epoch=epoch + 1, epochs=epochs, step=counters["global_step"])
            if (epoch + 1) % cfg.train.checkpoint_every_epochs == 0 and epoch + 1 < epochs:
                self._checkpoint(accelerator, model, optimizer, counters, epoch + 1, 0)
        bar.close()
        accelerator.wait_for_everyone()
        metrics: dict[str, Any] = {}
        if main:
            metrics = self._evaluate(model, data, cfg, accelerator.device)
            self._export(model, cfg, backbone, band_featurizer, method_options, train, metrics, data)
            write_json_atomic(self.run_dir / "metrics.json", metrics)
            self.events.emit("eval", **{k: v for k, v in metrics.items() if k != "per_class"})
            self.events.emit("status", status="finished", metrics={k: v for k, v in metrics.items() if k != "per_class"})
        return TrainResult("finished", self.run_dir, metrics, model)

    def _loader(self, data: FewShotData, cache: FeatureCache, views: AugmentedViews, epoch: int, batch_size: int, max_views: int, model: PromptModel) -> DataLoader:
        """This epoch's batches: view ``epoch % max_views`` of every image, in a seeded order."""
        view = epoch % max(1, max_views)
        items = [data.train[i] for i in self._epoch_order(len(data.train), epoch)]
        frozen = cache.get(items, view)
        dataset = _EpochDataset(items, frozen, views if model.needs_image_grad else None, view)
        # its own generator: creating the iterator must not draw from the global RNG, or a resumed
        # run would see different counterfactual permutations than an uninterrupted one
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.config.train.num_workers, generator=torch.Generator().manual_seed(epoch))

    def _epoch_order(self, count: int, epoch: int) -> list[int]:
        """The seeded sample order of an epoch (the same in every process and after a resume)."""
        return torch.randperm(count, generator=torch.Generator().manual_seed(self.config.train.seed * 100_003 + epoch)).tolist()

    def _checkpoint(self, accelerator: Accelerator, model: PromptModel, optimizer: Any, counters: dict[str, int], epoch: int, step_in_epoch: int) -> None:
        """Save where to continue: (epoch, step inside it). The optimizer is unwrapped from accelerate."""
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and optimizer is not None:
            state = {**counters, "epoch": epoch, "step_in_epoch": step_in_epoch}
            save_resume_state(self.run_dir / "checkpoint", model.learned_state_dict(), optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, state)
            self.events.emit("checkpoint", **state)

    def _evaluate(self, model: PromptModel, data: FewShotData, cfg: RunConfig, device: torch.device) -> dict[str, Any]:
        predictor = Predictor(model, device=device)
        result = predictor.evaluate(data.test)
        metrics: dict[str, Any] = {"accuracy": result.accuracy, "per_class": result.per_class, "test_images": result.count}
        if cfg.data.subsample == "base":
            new = read_fewshot_folder(cfg.data.root, cfg.data.shots, cfg.data.seed, cfg.data.split_ratio, "new")
            predictor.set_classnames(new.classnames)
            new_result = predictor.evaluate(new.test)
            predictor.set_classnames(data.classnames)
            metrics.update(base=result.accuracy, new=new_result.accuracy, hm=harmonic_mean(result.accuracy, new_result.accuracy))
        return metrics

    def _export(self, model: PromptModel, cfg: RunConfig, backbone: Backbone, band_featurizer: BandFeaturizer | None, method_options: dict, train: dict, metrics: dict, data: FewShotData) -> None:
        preprocessing = dict(getattr(backbone.model.visual, "preprocess_cfg", {}) or {})
        preprocessing.update(image_size=backbone.image_size, mean=list(backbone.normalization[0]), std=list(backbone.normalization[1]))
        bundle_config = {
            "backbone": dataclasses.asdict(backbone.config),
            "method": {**dataclasses.asdict(cfg.method), "options": method_options},
            "decomposer": dataclasses.asdict(cfg.decomposer) if band_featurizer else None,
            "band_stat_dim": band_featurizer.decomposer.stat_dim if band_featurizer else None,
            "classnames": data.classnames,
            "template": cfg.template,
            "preprocessing": preprocessing,
            "train": train,
            "data": dataclasses.asdict(cfg.data),
            "metrics": {k: v for k, v in metrics.items() if k != "per_class"},
            "versions": versions(),
        }
        write_bundle(self.run_dir / "model", model.learned_state_dict(), bundle_config, render_model_card(bundle_config))


class _EpochDataset(Dataset):
    """One epoch's samples as dicts: label, cached frozen features, and the image itself only when
    the host needs gradients through the image tower."""

    def __init__(self, items: list[ImageItem], frozen: dict[str, torch.Tensor], views: AugmentedViews | None, view: int) -> None:
        self.items, self.frozen, self.views, self.view = items, frozen, views, view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = {name: value[index] for name, value in self.frozen.items()}
        sample["labels"] = torch.tensor(self.items[index].label)
        if self.views is not None:
            sample["images"] = self.views.load(self.items[index].path, self.view)
        return sample


def _to_batch(sample: dict[str, torch.Tensor]) -> Batch:
    bands = (sample["low"], sample["high"]) if "low" in sample else None
    return Batch(labels=sample["labels"], images=sample.get("images"), image_features=sample.get("image_features"), band_stats=bands)


def _booster_needs_bands(name: str) -> bool:
    from specpl.methods import BOOSTERS

    return bool(BOOSTERS.get(name).needs_bands)


def _build_optimizer(params: list[torch.nn.Parameter], train: dict[str, Any]) -> torch.optim.Optimizer:
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=train["momentum"], weight_decay=train["weight_decay"])
    if train["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
    raise ValueError(f"unknown optimizer {train['optimizer']!r}; use 'sgd' or 'adamw'")


def _lr_schedule(train: dict[str, Any], steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """Dassl's schedule as a pure function of the step (so resume is exact): a constant warm-up
    lr for `warmup_epochs`, then cosine decay from the base lr to zero."""
    warmup = steps_per_epoch * train["warmup_epochs"] if train["epochs"] > train["warmup_epochs"] else 0

    def lr_at(step: int) -> float:
        if step < warmup:
            return train["warmup_lr"]
        return train["lr"] * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return lr_at
