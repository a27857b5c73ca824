"""Torch trainer: a tabular network that behaves like a scikit-learn estimator.

`TabularNetEstimator` is the `model` step of the same pipeline the scikit-learn trainers use
(the fitted `features` transform, then the estimator), so a torch challenger is evaluated,
gated, registered, deployed and served like any other model: the logged pipeline scores raw
rows. The network is an MLP over the transformed features (the transform already one-hots the
categories): softmax over the classes for classification, a standardised target for regression.

Training is reproducible (seeded, deterministic algorithms, a seeded shuffle), stops early on a
seeded validation split and keeps the best epoch's weights, uses mixed precision on CUDA, fails
on a NaN or infinite loss naming the epoch, and writes a checkpoint every epoch so that a killed
or retried fit resumes where it stopped.

torch is imported only inside functions: importing this module does not load it. A fitted
estimator keeps its weights as NumPy arrays and rebuilds the network on CPU to predict.

Example:
    ```python
    import numpy as np
    from prefect_mlops.tasks.torch_trainer import TabularNetEstimator
    x = np.random.default_rng(0).normal(size=(200, 3))
    net = TabularNetEstimator(hidden_layers=[8], epochs=3, seed=1).fit(x, (x[:, 0] > 0).astype(int))
    assert net.predict_proba(x).shape == (200, 2) and net.device_ in ("cpu", "cuda")
    ```
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError
from sklearn.base import BaseEstimator
from sklearn.utils.metaestimators import available_if

from prefect_mlops.console import report
from prefect_mlops.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    import torch

__all__ = ["TabularNetEstimator", "TorchConfig", "require_torch", "resolve_device"]

INSTALL_HINT = "install it with `pip install 'prefect-mlops[torch]'` (CPU: `pip install torch==2.13.0` first)"
CHECKPOINT_FORMAT = 1
CHECKPOINT_PREFIX = "tabularnet-"
PREDICT_BATCH = 65536  # rows per forward pass when predicting: bounds memory, not speed
EVAL_BATCH = 16384  # rows per forward pass for the validation loss


class TorchConfig(BaseModel):
    """The network, optimiser and training loop of a `TabularNetEstimator`.

    Example:
        ```python
        from prefect_mlops.tasks.torch_trainer import TorchConfig
        config = TorchConfig(hidden_layers=[32, 16], optimizer="sgd", learning_rate=0.05)
        assert config.hidden_layers == (32, 16) and config.device == "auto"
        ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Literal["auto", "classification", "regression"] = Field(
        default="auto", description="'auto': classification for a binary or multiclass target, else regression."
    )
    hidden_layers: tuple[PositiveInt, ...] = Field(
        default=(64, 32), description="Width of each hidden layer (Linear -> ReLU -> Dropout); empty: linear."
    )
    dropout: float = Field(default=0.1, ge=0, lt=1, description="Dropout after each hidden layer.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(default="adamw", description="Optimiser.")
    learning_rate: float = Field(default=1e-3, gt=0, description="Learning rate.")
    weight_decay: float = Field(default=1e-4, ge=0, description="L2 penalty (decoupled for adamw).")
    batch_size: PositiveInt = Field(default=256, description="Rows per training step.")
    epochs: PositiveInt = Field(default=30, description="Most passes over the training rows.")
    patience: PositiveInt = Field(
        default=5, description="Stop after this many epochs without a lower validation loss."
    )
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Share of the training rows held out (seeded) for early stopping."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="'auto': CUDA when available, else CPU; 'cuda' fails where there is none."
    )
    amp: bool = Field(default=True, description="Mixed precision (float16 autocast + GradScaler) on CUDA.")


def require_torch() -> Any:
    """Import torch, or raise an `ImportError` that says how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"PyTorch is not installed ({exc}); {INSTALL_HINT}") from exc
    return torch


def _torch() -> Any:
    try:
        return require_torch()
    except ImportError as exc:
        raise TrainingError(f"the torch trainer needs PyTorch: {exc}") from exc


def resolve_device(requested: str) -> str:
    """'cpu' or 'cuda' for a requested device; `TrainingError` when 'cuda' is asked for and absent."""
    torch = _torch()
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise TrainingError(
            f"device 'cuda' was requested but CUDA is not available here (torch {torch.__version__}, {build}); "
            "use device 'auto' to train on a GPU only when there is one, or 'cpu'"
        )
    if requested == "auto":
        return "cuda" if available else "cpu"
    return requested


def build_network(n_inputs: int, hidden_layers: tuple[int, ...], n_outputs: int, dropout: float) -> Any:
    """The MLP: (Linear -> ReLU -> Dropout) per hidden layer, then a Linear output layer."""
    nn = _torch().nn
    layers: list[Any] = []
    width = n_inputs
    for size in hidden_layers:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


def _checked_rows(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """The feature matrix and flat labels of one fit or partial_fit call, as many rows each and all finite."""
    x = _as_matrix(X)
    labels = np.asarray(y).ravel()
    if len(x) != len(labels):
        raise ValueError(f"X has {len(x)} rows but y has {len(labels)}")
    if not np.isfinite(x).all():
        raise TrainingError("the feature matrix holds NaN or infinite values; impute them in the feature transform")
    return x, labels


def _as_matrix(x: Any) -> np.ndarray:
    if hasattr(x, "toarray"):  # scipy sparse
        x = x.toarray()
    matrix = np.asarray(x, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D feature matrix, got shape {matrix.shape}")
    return np.ascontiguousarray(matrix)


def _logger() -> Any:
    from prefect_mlops.log import run_logger

    return run_logger()


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a reader (or a resumed fit) never sees half a file."""
    torch = _torch()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    torch = _torch()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unreadable checkpoint is only a lost head start
        _logger().warning("ignoring unreadable checkpoint %s (%s); training from the start", path, exc)
        return None


class TabularNetEstimator(BaseEstimator):
    """A PyTorch MLP with the scikit-learn estimator interface (fit, predict, predict_proba, classes_).

    Parameters are those of `TorchConfig`, plus `seed` and `checkpoint_dir`: a folder where a
    checkpoint is written every epoch and from which a fit on the same data and parameters resumes.

    Fitted attributes: `task_`, `classes_` (classification), `n_features_in_`, `device_`, `amp_`,
    `history_` (one dict per epoch: epoch, train_loss, val_loss, seconds), `best_epoch_`,
    `best_val_loss_`, `n_epochs_`, `resumed_from_epoch_` (None for a fresh fit), `checkpoint_path_`.
    """

    def __init__(
        self,
        *,
        task: str = "auto",
        hidden_layers: tuple[int, ...] | list[int] = (64, 32),
        dropout: float = 0.1,
        optimizer: str = "adamw",
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        epochs: int = 30,
        patience: int = 5,
        validation_fraction: float = 0.1,
        device: str = "auto",
        amp: bool = True,
        seed: int = 0,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.task = task
        self.hidden_layers = hidden_layers
        self.dropout = dropout
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.amp = amp
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir

    def config(self) -> TorchConfig:
        """The validated `TorchConfig` of this estimator's parameters; `ConfigError` naming a bad one."""
        values = {k: v for k, v in self.get_params().items() if k in TorchConfig.model_fields}
        try:
            return TorchConfig(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                                 for e in exc.errors())
            raise ConfigError(f"torch trainer params: {problems}") from None

    # -- fitting -----------------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> TabularNetEstimator:
        """Train the network on `X` (already transformed) and `y`; see the class docstring."""
        self.__dict__.pop("_stream", None)  # a fit starts over, whatever partial_fit did before
        config = self.config()
        torch = _torch()
        x, labels = _checked_rows(X, y)
        if len(x) < 2:
            raise TrainingError(f"the torch trainer needs at least 2 training rows (a validation split), got {len(x)}")
        task = self._task(config, labels)
        if task == "classification":
            classes, codes = np.unique(labels, return_inverse=True)
            if len(classes) < 2:
                raise TrainingError(f"a classifier needs at least two classes; the target only holds {classes[0]!r}")
            target = codes.astype(np.int64)
            n_outputs = len(classes)
        else:
            values = labels.astype(np.float64)
            if not np.isfinite(values).all():
                raise TrainingError("the regression target holds NaN or infinite values")
            mean, std = float(values.mean()), float(values.std())
            std = std if std > 0 and math.isfinite(std) else 1.0
            target = ((values - mean) / std).astype(np.float32)
            n_outputs = 1
        device = resolve_device(config.device)
        amp = bool(config.amp and device == "cuda")
        if device == "cuda":  # cuBLAS needs this, set before its first use, to be deterministic
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

        # Deterministic algorithms for this fit only; the caller's setting comes back afterwards. Filling
        # new tensors with NaN (on by default in deterministic mode) only guards reads of uninitialised
        # memory, which this loop never does, and costs ~4% of a small network's step: it stays off.
        import torch.utils.deterministic as deterministic

        previous = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled(), deterministic.fill_uninitialized_memory)
        torch.use_deterministic_algorithms(True, warn_only=True)
        deterministic.fill_uninitialized_memory = False
        try:
            state, net = self._train(config, x, target, task, n_outputs, device, amp, labels)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            deterministic.fill_uninitialized_memory = previous[2]

        self.task_ = task
        if task == "classification":
            self.classes_ = classes
        else:
            self.target_mean_, self.target_std_ = mean, std
            self.__dict__.pop("classes_", None)
        self.n_features_in_ = x.shape[1]
        self.n_outputs_ = n_outputs
        self.hidden_layers_ = tuple(config.hidden_layers)
        self.dropout_ = config.dropout
        self.weights_ = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        self.device_ = device
        self.amp_ = amp
        self.history_ = state["history"]
        self.best_epoch_ = state["best_epoch"]
        self.best_val_loss_ = state["best_loss"]
        self.n_epochs_ = state["epoch"]
        self.resumed_from_epoch_ = state["resumed_from"]
        self.checkpoint_path_ = state["path"]
        self._net = None
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> TabularNetEstimator:
        """One pass over `X`, `y` in seeded mini-batches, continuing the network from the previous call.

        For data larger than memory: train streams the snapshot's batches through it (the retrain
        policy's `TrainingBudget(when_over="incremental")`). The first call fixes the task, the
        classes (pass `classes`: a batch may miss one) and, for regression, the target's scale
        (from that first batch). There is no validation split, early stopping or checkpoint here:
        each call's mean loss goes to `history_` as `train_loss`, `epoch` counting the calls.

        Example:
            ```python
            import numpy as np
            from prefect_mlops.tasks.torch_trainer import TabularNetEstimator
            x = np.random.default_rng(0).normal(size=(400, 3))
            y = (x[:, 0] > 0).astype(int)
            net = TabularNetEstimator(hidden_layers=[8], seed=1)
            for start in range(0, 400, 100):
                net.partial_fit(x[start:start + 100], y[start:start + 100], classes=[0, 1])
            assert net.n_epochs_ == 4 and net.predict_proba(x).shape == (400, 2)
            ```
        """
        config = self.config()
        torch = _torch()
        x, labels = _checked_rows(X, y)
        stream = getattr(self, "_stream", None)
        if stream is None:
            stream = self._start_stream(config, x, labels, classes)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, but the first partial_fit had {self.n_features_in_}")
        if self.task_ == "classification":
            codes = np.searchsorted(self.classes_, labels)
            codes = np.minimum(codes, len(self.classes_) - 1)
            unknown = labels[self.classes_[codes] != labels]
            if len(unknown):
                raise TrainingError(f"the target holds {unknown[0]!r}, not among the classes given to the first "
                                    f"partial_fit {self.classes_.tolist()}; pass every class there")
            target = codes.astype(np.int64)
        else:
            target = ((labels.astype(np.float64) - self.target_mean_) / self.target_std_).astype(np.float32)
        net, optimizer, dev = stream["net"], stream["optimizer"], stream["dev"]
        functional = torch.nn.functional
        x_t, t_t = torch.from_numpy(x).to(dev), torch.from_numpy(target).to(dev)
        started = time.perf_counter()
        net.train()
        order = torch.randperm(len(x), generator=stream["shuffle"]).to(dev)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            rows = order[start:start + config.batch_size]
            out = net(x_t.index_select(0, rows)).float()
            t = t_t.index_select(0, rows)
            loss = functional.cross_entropy(out, t) if self.task_ == "classification" else \
                functional.mse_loss(out.squeeze(1), t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * rows.shape[0]
        train_loss = total / max(len(x), 1)
        if not math.isfinite(train_loss):
            raise TrainingError(f"torch trainer: the training loss is {train_loss} at partial_fit call "
                                f"{self.n_epochs_ + 1}: the network diverged. Lower learning_rate "
                                f"({config.learning_rate:g}), or check the features' scale")
        self.n_epochs_ += 1
        self.best_epoch_ = self.n_epochs_
        self.history_.append({"epoch": self.n_epochs_, "train_loss": train_loss,
                              "seconds": time.perf_counter() - started})
        self.weights_ = {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}
        self._net = None
        return self

    def _start_stream(self, config: TorchConfig, x: np.ndarray, labels: np.ndarray, classes: Any) -> dict[str, Any]:
        """The first partial_fit: task, classes or target scale, the network and its optimizer."""
        torch = _torch()
        task = config.task if config.task != "auto" else (
            "classification" if classes is not None else self._task(config, labels))
        if task == "classification":
            self.classes_ = np.unique(np.asarray(classes if classes is not None else labels))
            if len(self.classes_) < 2:
                raise TrainingError(f"a classifier needs at least two classes; got {self.classes_.tolist()}")
            n_outputs = len(self.classes_)
        else:
            values = labels.astype(np.float64)
            std = float(values.std()) if len(values) else 1.0
            self.target_mean_ = float(values.mean()) if len(values) else 0.0
            self.target_std_ = std if std > 0 and math.isfinite(std) else 1.0
            self.__dict__.pop("classes_", None)
            n_outputs = 1
        seed = int(self.seed)
        torch.manual_seed(seed)
        device = resolve_device(config.device)
        dev = torch.device(device)
        net = build_network(x.shape[1], tuple(config.hidden_layers), n_outputs, config.dropout).to(dev)
        self.task_, self.n_features_in_, self.n_outputs_ = task, x.shape[1], n_outputs
        self.hidden_layers_, self.dropout_ = tuple(config.hidden_layers), config.dropout
        self.device_, self.amp_ = device, False  # streamed batches train in full precision
        self.history_, self.n_epochs_, self.best_epoch_ = [], 0, 0
        self.best_val_loss_ = self.resumed_from_epoch_ = self.checkpoint_path_ = None
        self._stream = {"net": net, "optimizer": _optimizer(torch, config, net.parameters()), "dev": dev,
                        "shuffle": torch.Generator().manual_seed(seed)}
        return self._stream

    def _task(self, config: TorchConfig, labels: np.ndarray) -> str:
        if config.task != "auto":
            return config.task
        from sklearn.utils.multiclass import type_of_target

        kind = type_of_target(labels)
        if kind in ("binary", "multiclass"):
            return "classification"
        if kind == "continuous":
            return "regression"
        raise TrainingError(f"cannot tell the task from a target of type {kind!r}; set task to "
                            "'classification' or 'regression'")

    def _checkpoint_key(self, config: TorchConfig, x: np.ndarray, target: np.ndarray, labels: np.ndarray,
                        device: str, amp: bool) -> str:
        digest = hashlib.sha256()
        recipe = {"format": CHECKPOINT_FORMAT, "torch": _torch().__version__,
                  "config": config.model_dump(mode="json"), "seed": self.seed,
                  "device": device, "amp": amp, "shape": list(x.shape),
                  "classes": [str(c) for c in np.unique(labels)] if target.dtype == np.int64 else None}
        digest.update(json.dumps(recipe, sort_keys=True).encode())
        digest.update(x.tobytes())
        digest.update(target.tobytes())
        return digest.hexdigest()

    def _train(self, config: TorchConfig, x: np.ndarray, target: np.ndarray, task: str, n_outputs: int,
               device: str, amp: bool, labels: np.ndarray) -> tuple[dict[str, Any], Any]:
        torch = _torch()
        functional = torch.nn.functional
        log = _logger()
        seed = int(self.seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

        rows = len(x)
        n_val = min(rows - 1, max(1, round(rows * config.validation_fraction)))
        order = np.random.default_rng(seed).permutation(rows)
        val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
        dev = torch.device(device)
        x_train = torch.from_numpy(x[train_rows]).to(dev)
        t_train = torch.from_numpy(target[train_rows]).to(dev)
        x_val = torch.from_numpy(x[val_rows]).to(dev)
        t_val = torch.from_numpy(target[val_rows]).to(dev)
        n_train = len(train_rows)

        net = build_network(x.shape[1], tuple(config.hidden_layers), n_outputs, config.dropout).to(dev)
        optimizer = _optimizer(torch, config, net.parameters())
        scaler = torch.amp.GradScaler(device, enabled=amp)
        shuffle = torch.Generator().manual_seed(seed)  # the batches' order, like a seeded DataLoader

        if task == "classification":
            def loss_of(out: torch.Tensor, t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
                return functional.cross_entropy(out.float(), t, reduction=reduction)
        else:
            def loss_of(out: torch.Tensor, t: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
                return functional.mse_loss(out.float().squeeze(1), t, reduction=reduction)

        def autocast() -> Any:
            return torch.autocast(device_type="cuda", dtype=torch.float16) if amp else contextlib.nullcontext()

        state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_loss": math.inf, "best_weights": None,
                                 "bad_epochs": 0, "history": [], "finished": False, "resumed_from": None,
                                 "path": None}
        path = key = None
        if self.checkpoint_dir:
            key = self._checkpoint_key(config, x, target, labels, device, amp)
            folder = Path(self.checkpoint_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{CHECKPOINT_PREFIX}{key[:16]}.pt"
            state["path"] = str(path)
            saved = _load_checkpoint(path) if path.exists() else None
            if saved is not None and saved.get("format") == CHECKPOINT_FORMAT and saved.get("key") == key:
                _restore(torch, saved, net, optimizer, scaler, shuffle, state, dev)
                state["resumed_from"] = saved["epoch"]
                log.info("torch trainer: resuming from checkpoint %s at epoch %d of %d%s", path, saved["epoch"],
                         config.epochs, " (training had finished)" if saved["finished"] else "")

        while not state["finished"] and state["epoch"] < config.epochs:
            epoch = state["epoch"] + 1
            started = time.perf_counter()
            net.train()
            order_t = torch.randperm(n_train, generator=shuffle).to(dev, non_blocking=True)
            total = torch.zeros((), device=dev)
            for start in range(0, n_train, config.batch_size):
                rows_b = order_t[start:start + config.batch_size]
                with autocast():
                    loss = loss_of(net(x_train.index_select(0, rows_b)), t_train.index_select(0, rows_b))
                optimizer.zero_grad(set_to_none=True)
                if amp:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:  # the scaler is a no-op without AMP: skip its calls on the hot path
                    loss.backward()
                    optimizer.step()
                total.add_(loss.detach(), alpha=rows_b.shape[0])  # summed on the device: no per-step sync
            train_loss = float(total) / n_train
            val_loss = _mean_loss(torch, net, x_val, t_val, loss_of, autocast)
            for name, value in (("training", train_loss), ("validation", val_loss)):
                if not math.isfinite(value):
                    raise TrainingError(
                        f"torch trainer: the {name} loss is {value} at epoch {epoch} of {config.epochs}: the network "
                        f"diverged. Lower learning_rate ({config.learning_rate:g}), or check the features' scale"
                    )
            state["epoch"] = epoch
            if val_loss < state["best_loss"]:
                state.update(best_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                             best_weights={k: v.detach().clone() for k, v in net.state_dict().items()})
            else:
                state["bad_epochs"] += 1
            state["finished"] = state["bad_epochs"] >= config.patience or epoch >= config.epochs
            seconds = time.perf_counter() - started
            state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                     "seconds": seconds})
            log.info("torch trainer: epoch %d/%d train_loss=%.5f val_loss=%.5f (best %.5f at epoch %d) %.2fs%s",
                     epoch, config.epochs, train_loss, val_loss, state["best_loss"], state["best_epoch"], seconds,
                     "; stopping early" if state["finished"] and epoch < config.epochs else "")
            report("epochs", "torch trainer", config.epochs if state["finished"] else epoch, config.epochs)
            if path is not None:
                _save_checkpoint(path, _snapshot(torch, key, net, optimizer, scaler, shuffle, state, dev))

        if state["best_weights"] is not None:
            net.load_state_dict(state["best_weights"])
        return state, net

    # -- predicting --------------------------------------------------------------------------------------

    def _network(self) -> Any:
        net = getattr(self, "_net", None)
        if net is None:
            torch = _torch()
            net = build_network(self.n_features_in_, self.hidden_layers_, self.n_outputs_, self.dropout_)
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.weights_.items()})
            net.eval()
            self._net = net
        return net

    def _outputs(self, X: Any) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "weights_")
        torch = _torch()
        x = _as_matrix(X)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features, but the network was fitted on {self.n_features_in_}")
        net = self._network()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(x), PREDICT_BATCH):
                parts.append(net(torch.from_numpy(x[start:start + PREDICT_BATCH])).numpy())
        return np.concatenate(parts) if parts else np.empty((0, self.n_outputs_), dtype=np.float32)

    def _is_classifier(self) -> bool:
        return getattr(self, "task_", self.task) != "regression"

    @available_if(_is_classifier)
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of `classes_`."""
        logits = self._outputs(X).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (classification) or values in the target's units (regression)."""
        outputs = self._outputs(X)
        if getattr(self, "task_", None) == "classification":
            return self.classes_[np.argmax(outputs, axis=1)]
        return outputs[:, 0].astype(np.float64) * self.target_std_ + self.target_mean_

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_net", None)  # rebuilt from `weights_` on first use
        state.pop("_stream", None)  # partial_fit's network and optimizer: the weights are in `weights_`
        return state


def _optimizer(torch: Any, config: TorchConfig, parameters: Any) -> Any:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def _mean_loss(torch: Any, net: Any, x: Any, t: Any, loss_of: Any, autocast: Any) -> float:
    net.eval()
    total = torch.zeros((), device=x.device)
    with torch.no_grad(), autocast():
        for start in range(0, len(x), EVAL_BATCH):
            total.add_(loss_of(net(x[start:start + EVAL_BATCH]), t[start:start + EVAL_BATCH], reduction="sum"))
    return float(total) / len(x)


def _snapshot(torch: Any, key: str | None, net: Any, optimizer: Any, scaler: Any, shuffle: Any,
              state: dict[str, Any], dev: Any) -> dict[str, Any]:
    """Everything a resumed fit needs to continue exactly as an uninterrupted one would."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "format": CHECKPOINT_FORMAT, "key": key, "epoch": state["epoch"], "finished": state["finished"],
        "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "best": {"epoch": state["best_epoch"], "loss": state["best_loss"], "weights": state["best_weights"],
                 "bad_epochs": state["bad_epochs"]},
        "history": state["history"],
        "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(),
                "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                "numpy": [name, keys.tolist(), position, has_gauss, gauss], "python": random.getstate()},
    }


def _restore(torch: Any, saved: dict[str, Any], net: Any, optimizer: Any, scaler: Any, shuffle: Any,
             state: dict[str, Any], dev: Any) -> None:
    net.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    best = saved["best"]
    weights = best["weights"]
    state.update(epoch=saved["epoch"], finished=saved["finished"], history=list(saved["history"]),
                 best_epoch=best["epoch"], best_loss=best["loss"], bad_epochs=best["bad_epochs"],
                 best_weights=None if weights is None else {k: v.to(dev) for k, v in weights.items()})
    rng = saved["rng"]
    torch.set_rng_state(rng["torch"])
    shuffle.set_state(rng["shuffle"])
    if rng["cuda"] is not None and dev.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], dev)
    name, keys, position, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
