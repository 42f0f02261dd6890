"""What defines a training run: :class:`TrainConfig`, its result, its errors and the run directory's file names."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mdlm_fast.util.validate import integer

STATE_NAME = "state.pt"
METRICS_NAME = "metrics.jsonl"
TOKENIZER_COPY = "tokenizer.json"
STATE_FORMAT = 1
#: Fields that may change between invocations on the same run directory.
RESUMABLE_FIELDS = frozenset(
    {
        "max_steps",
        "eval_every",
        "eval_batches",
        "save_every",
        "log_every",
        "threads",
        "export_val_passes",
        "device",
        "data",
        "tokenizer",
    }
)  # data/tokenizer: checked by content


class TrainError(ValueError):
    """A user error in training arguments or run directories (one-line message)."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in ``state.pt`` and in the model card)."""

    data: str
    kind: str = "mdlm"  # "mdlm" | "judge"
    tokenizer: str = "embedded"
    val_fraction: float = 0.05
    # model
    n_blocks: int = 8
    hidden_dim: int = 256
    n_heads: int = 4
    cond_dim: int = 128  # mdlm only
    length: int = 256
    dropout: float = 0.1
    time_conditioning: bool = False  # mdlm only
    tie_embeddings: bool = True  # judge only
    # optimization
    batch_size: int = 16
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # "cosine" | "constant"
    decay_steps: int | None = None  # cosine horizon; None = max_steps
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # MDLM noise
    antithetic: bool = True
    sampling_eps: float = 1e-3
    noise_eps: float = 1e-3
    # loop
    max_steps: int = 1000
    eval_every: int = 250
    eval_batches: int | None = 8  # None = the whole validation split
    save_every: int = 100
    log_every: int = 10
    export_val_passes: int = 4  # mdlm: t-draws per validation window at export
    seed: int = 0
    threads: int | None = None
    amp: str = "none"  # "none" | "bf16": autocast matmuls to bf16 (fp32 master weights)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in ("mdlm", "judge"):
            raise TrainError(f"kind must be 'mdlm' or 'judge', got {self.kind!r}")
        if self.amp not in ("none", "bf16"):
            raise TrainError(f"amp must be 'none' or 'bf16', got {self.amp!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise TrainError(f"unknown device {self.device!r}") from None
        if self.lr_schedule not in ("cosine", "constant"):
            raise TrainError(f"lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        betas = tuple(float(b) for b in self.betas)
        # AdamW only reads two betas: a third would be accepted here and fail at the first step.
        if len(betas) != 2:
            raise TrainError(f"betas must be two numbers, got {list(self.betas)}")
        self.betas = (betas[0], betas[1])
        for name in (
            "n_blocks",
            "hidden_dim",
            "n_heads",
            "cond_dim",
            "length",
            "batch_size",
            "max_steps",
            "eval_every",
            "save_every",
            "log_every",
            "export_val_passes",
        ):
            integer(name, getattr(self, name), minimum=1, error=TrainError)
        integer("warmup_steps", self.warmup_steps, minimum=0, error=TrainError)
        if self.hidden_dim % self.n_heads or (self.hidden_dim // self.n_heads) % 2:
            raise TrainError(f"hidden_dim {self.hidden_dim} must split into n_heads {self.n_heads} heads of even size")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise TrainError(f"need lr > 0 and 0 <= min_lr_ratio <= 1 (got {self.lr}, {self.min_lr_ratio})")
        if not 0 <= self.ema_decay < 1:
            raise TrainError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.dropout < 1:
            raise TrainError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.sampling_eps < 1:
            raise TrainError(f"sampling_eps must be in (0, 1), got {self.sampling_eps}")
        if self.eval_batches is not None and self.eval_batches <= 0:
            raise TrainError(f"eval_batches must be positive or None, got {self.eval_batches}")
        if self.threads is not None and self.threads <= 0:
            raise TrainError(f"threads must be positive, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.length


@dataclass
class TrainResult:
    step: int
    tokens_seen: int
    wall_time_s: float
    stopped: str  # "max_steps" | "time_budget" | "signal"
    last_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    run_dir: str
    metrics: list[dict] = field(default_factory=list)  # rows written by this invocation
