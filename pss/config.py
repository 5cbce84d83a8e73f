"""Typed experiment configuration: schema, YAML loading, dotted overrides, fingerprint.

An experiment is one YAML file (or several, merged left to right) validated
against :class:`ExperimentConfig`. The defaults *are* the paper's recipe
(docs/method.md), so a config file only says what differs. Every key is
checked: unknown keys and wrong types fail before anything runs, naming the
file, the dotted key and the nearest valid key.

    cfg = load_config(["experiments/fcos_pss_r50_3x.yaml"], ["model.pss.num_convs=3"])
    cfg.fingerprint()   # sha256 of the canonical JSON, first 12 hex digits
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pss.contract import MODES, has_pss
from pss.errors import UserError, nearest, validation_error

MODEL_NAMES = (
    "fcos",
    "atss",
    "fcos_pss",
    "atss_pss",
    "gfocalv2",
    "gfocalv2_pss",
    "condinst",
    "condinst_pss",
)
# The one-to-many detectors: a model name's first word.
BASES = ("fcos", "atss", "gfocalv2", "condinst")
# The instance segmentation bases and the box detector each one is built on.
MASK_BASES = {"condinst": "fcos"}
BACKBONES = (
    "resnet18",
    "resnet18_half",  # ResNet-18 at half width: a CPU backbone for smoke runs
    "resnet34",
    "resnet50",
    "resnet101",
    "resnext101_32x4d",
    "res2net101_26w_4s",
)
EVAL_MODES = MODES


class _Section(BaseModel):
    # allow_inf_nan=False: no setting of ours means anything at .inf or .nan (learning
    # rates, weight decay, loss weights, momentum, clipping, ranges: 1e8 is the open end).
    model_config = ConfigDict(
        extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False
    )


class BackboneConfig(_Section):
    name: Literal[BACKBONES] = "resnet50"  # type: ignore[valid-type]
    # None: random init. A path to a state dict file (.pth / .safetensors); or the
    # library's own: a torchvision weights enum member such as "IMAGENET1K_V1", or
    # "DEFAULT" for timm's pretrained weights (those download on first use; tests
    # never do).
    weights: str | None = None
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    # -1: nothing frozen; 0: stem; 1: stem and stage 1 (C2); up to 4.
    frozen_stages: int = Field(1, ge=-1, le=4)
    # Modulated deformable convs (DCNv2) in the 3x3 convs of stages C3-C5.
    dcn: bool = False


class HeadConfig(_Section):
    channels: int = Field(256, ge=8)  # FPN and head width
    num_convs: int = Field(4, ge=0)  # convs per tower
    centerness: bool = True  # Table 6: off drops the branch, keeps the GIoU weighting
    prior_prob: float = Field(0.01, gt=0, lt=1)


class PSSConfig(_Section):
    num_convs: int = Field(2, ge=0)
    branch: Literal["regression", "classification"] = "regression"
    stop_grad: bool = True


class AssignConfig(_Section):
    # One-to-many (FCOS)
    center_sampling_radius: float = Field(1.5, gt=0)
    regress_ranges: list[list[float]] = [
        [-1.0, 64.0],
        [64.0, 128.0],
        [128.0, 256.0],
        [256.0, 512.0],
        [512.0, 1.0e8],
    ]
    # One-to-many (ATSS)
    atss_topk: int = Field(9, ge=1)
    anchor_scale: float = Field(8.0, gt=0)  # anchor side = anchor_scale * stride
    # One-to-one (PSS)
    match: Literal["mul", "add"] = "mul"
    alpha: float = Field(0.8, ge=0, le=1)
    solver: Literal["hungarian", "top1"] = "hungarian"

    @model_validator(mode="after")
    def _five_ranges(self) -> AssignConfig:
        if len(self.regress_ranges) != 5 or any(len(r) != 2 for r in self.regress_ranges):
            raise ValueError("regress_ranges must be 5 pairs [lo, hi], one per level P3-P7")
        return self


class LossConfig(_Section):
    focal_alpha: float = Field(0.25, ge=0, le=1)
    focal_gamma: float = Field(2.0, ge=0)
    giou_weight: float = Field(2.0, ge=0)
    centerness_weight: float = Field(1.0, ge=0)
    pss_weight: float = Field(1.0, ge=0)  # lambda1
    rank_weight: float = Field(0.25, ge=0)  # lambda2 (0 turns the ranking loss off)
    rank_margin: float = Field(0.5, ge=0)  # gamma of Eq. 2
    rank_negatives: int = Field(100, ge=1)  # n_- of Eq. 2


class InferenceConfig(_Section):
    score_thresh: float = Field(0.05, ge=0, le=1)  # nms mode
    nms_iou: float = Field(0.6, gt=0, le=1)
    pre_nms_topk: int = Field(1000, ge=1)  # per level
    max_per_image: int = Field(100, ge=1)
    e2e_score_thresh: float = Field(0.0, ge=0, le=1)  # e2e and raw modes


class ModelConfig(_Section):
    name: Literal[MODEL_NAMES] = "fcos_pss"  # type: ignore[valid-type]
    num_classes: int = Field(80, ge=1)
    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()
    pss: PSSConfig = PSSConfig()
    assign: AssignConfig = AssignConfig()
    loss: LossConfig = LossConfig()
    inference: InferenceConfig = InferenceConfig()

    @property
    def base(self) -> Literal[BASES]:  # type: ignore[valid-type]
        """The one-to-many detector underneath: 'fcos', 'atss', 'gfocalv2' or 'condinst'."""
        return self.name.split("_")[0]

    @property
    def box_base(self) -> str:
        """The box detector: ``base``, or the one an instance segmentation model is built
        on (CondInst: FCOS). Box decoding and the one-to-many assignment follow it."""
        return MASK_BASES.get(self.base, self.base)

    @property
    def has_masks(self) -> bool:
        """Whether the model predicts instance masks (CondInst)."""
        return self.base in MASK_BASES

    @model_validator(mode="after")
    def _quality_branch(self) -> ModelConfig:
        if self.base == "gfocalv2" and not self.head.centerness:
            raise ValueError(
                f"model.head.centerness=false: {self.name} has no center-ness branch to drop "
                "(its quality predictor, DGQP, takes that place)"
            )
        return self

    @property
    def has_pss(self) -> bool:
        return has_pss(self.name)


class SyntheticConfig(_Section):
    """Generate a shapes dataset into data.root when it is not there yet."""

    train: int = Field(200, ge=1)
    val: int = Field(50, ge=1)
    size: int = Field(256, ge=32)
    seed: int = 0
    # Shortest and longest object side in pixels, spread log-uniformly (default: 12-200
    # at 256 px, scaled with size: FPN strides 8-128). Size the images to the objects.
    sides: list[float] | None = None

    @model_validator(mode="after")
    def _check_sides(self) -> SyntheticConfig:
        if self.sides is not None:
            lo, hi = (self.sides + [0.0, 0.0])[:2]
            if len(self.sides) != 2 or not 2 <= lo < hi <= self.size - 2:
                raise ValueError(
                    f"sides must be [min, max] with 2 <= min < max <= size - 2 = "
                    f"{self.size - 2}, got {self.sides}"
                )
        return self


class DataConfig(_Section):
    # The one setting that says where COCO lives. Strings may use ${VAR} and
    # ${VAR:-default}; the paper-scale experiments use ${PSS_COCO_ROOT:-data/coco}.
    root: str = "data/coco"
    train_images: str = "train2017"
    train_annotations: str = "annotations/instances_train2017.json"
    val_images: str = "val2017"
    val_annotations: str = "annotations/instances_val2017.json"
    synthetic: SyntheticConfig | None = None
    # Multi-scale training: the shorter side is drawn from this list.
    train_scales: list[Annotated[int, Field(ge=32)]] = Field(
        default_factory=lambda: list(range(480, 801, 32)), min_length=1
    )
    max_size: int = Field(1333, ge=32)
    test_scale: int = Field(800, ge=32)
    flip_prob: float = Field(0.5, ge=0, le=1)
    size_divisibility: int = Field(32, ge=1)
    num_workers: int = Field(4, ge=0)
    max_val_images: int | None = Field(None, ge=1)  # evaluate on the first N only


class TrainConfig(_Section):
    epochs: int = Field(36, ge=1)
    batch_size: int = Field(16, ge=1)  # total over all GPUs
    base_lr: float = Field(0.01, gt=0)  # at reference_batch; scaled linearly
    reference_batch: int = Field(16, ge=1)
    # SGD with momentum (the paper's), or AdamW (betas 0.9, 0.999; weight_decay
    # decoupled): from-scratch CPU runs such as the demo learn faster with it.
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_steps: list[int] = [24, 33]  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = Field(0.1, gt=0)
    warmup_iters: int = Field(500, ge=0)
    warmup_factor: float = Field(1.0 / 3.0, gt=0, le=1)
    grad_clip: float | None = Field(35.0, gt=0)
    # Mixed precision. true (default): on CUDA bfloat16 autocast where the GPU supports
    # it (Ampere and later), else float16 with a gradient scaler; float32 on a CPU.
    # "fp16": float16 with a scaler, refused on a CPU; "bf16": bfloat16 autocast without
    # a scaler, on a CPU or CUDA; false: float32. The losses stay float32.
    amp: bool | Literal["fp16", "bf16"] = True
    # The network's weights and activations in channels-last (NHWC) memory order: how it
    # runs, not what it trains (no fingerprint counts it). Off until
    # benchmarks/gpu_check.py shows it faster on a GPU (docs/benchmarks.md).
    channels_last: bool = False
    seed: int = 0
    iters_per_epoch: int | None = Field(None, ge=1)  # cap, for smoke runs
    # Two-step training (Table 3): start from a stage-1 checkpoint and train only
    # the PSS head ("pss"), everything else frozen.
    init_from: str | None = None
    trainable: Literal["all", "pss"] = "all"
    log_interval: int = Field(20, ge=1)

    @property
    def lr(self) -> float:
        """The learning rate of this batch: ``base_lr`` scaled linearly from ``reference_batch``."""
        return self.base_lr * self.batch_size / self.reference_batch


class EvalConfig(_Section):
    interval: int = Field(1, ge=1)  # evaluate every N epochs and at the end
    modes: list[Literal[EVAL_MODES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(EVAL_MODES), min_length=1
    )
    batch_size: int = Field(1, ge=1)

    @field_validator("modes")
    @classmethod
    def _distinct_modes(cls, modes: list[str]) -> list[str]:
        if len(set(modes)) != len(modes):
            raise ValueError(f"a mode is named twice: {modes}")
        return modes


class ExperimentConfig(_Section):
    name: str = "experiment"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output_dir: str | None = None  # default: outputs/<name>

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.train.trainable == "pss" and not self.model.has_pss:
            raise ValueError("train.trainable='pss' needs a *_pss model")
        if any(b <= a for a, b in zip(self.train.lr_steps, self.train.lr_steps[1:])):
            raise ValueError("train.lr_steps must increase")
        if not self.model.has_pss and set(self.eval.modes) <= {"e2e"}:
            raise ValueError(
                f"eval.modes={self.eval.modes} leaves nothing to evaluate: e2e needs a PSS "
                f"head and model.name={self.model.name} has none (add nms or raw)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        """Where checkpoints and evaluation files go."""
        return Path(self.output_dir or f"outputs/{self.name}")

    def flat(self) -> dict[str, Any]:
        """The config as {dotted key: value} (MLflow params, diffs)."""
        return flatten(self.model_dump(mode="json"))

    def fingerprint(self) -> str:
        """:func:`fingerprint` of this config: what it trains, wherever it runs."""
        return fingerprint(self.flat())


# ----------------------------------------------------------------------------
# Fingerprint

# The keys that do not change what is trained, left out of a fingerprint, so that
# moving a dataset does not make finished sweep cells look new: what a run is called
# and where it writes, where the data lives and how it is read, how often it logs, how
# it is launched. Keys of our config and of mmdet's merged configs (pss.mmdet.train);
# "*.key" is that key in any section.
NOT_COUNTED = (
    "name",
    "output_dir",
    "work_dir",
    "data.root",
    "*.data_root",
    "*.ann_file",
    "*.num_workers",
    "*.persistent_workers",
    "train.log_interval",
    "train.channels_last",
    "default_hooks.logger",
    "resume",
    "load_from",
    "launcher",
)


def counts(key: str) -> bool:
    """Whether a dotted key counts in a fingerprint (no entry of NOT_COUNTED covers it)."""
    for entry in NOT_COUNTED:
        if entry.startswith("*."):
            if key == entry[2:] or key.endswith(entry[1:]):
                return False
        elif key == entry or key.startswith(entry + "."):
            return False
    return True


def fingerprint(flat: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a flat config's keys that :func:`counts`, 12 hex.

    flat: {dotted key: JSON value}, our config's (:meth:`ExperimentConfig.flat`) or an
    mmdet config's. A sweep job's fingerprint combines its config's with its parent
    stages' and its engine (pss.sweep.expand).
    """
    kept = {k: v for k, v in flat.items() if counts(k)}
    blob = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------
# Loading


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``update`` merged into ``base``; nested dicts merge, the rest replace."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000


class _GuardedLoader(yaml.SafeLoader):
    """A SafeLoader (no Python tags) that also refuses alias bombs (billion laughs), and
    reads numbers as people write them: ``1e-4`` and ``5E-3`` are floats (YAML 1.2's
    rule; YAML 1.1, PyYAML's, wants a dot and a signed exponent, ``1.0e-4``)."""

    def construct_document(self, node):  # type: ignore[override]
        _check_size(node)
        return super().construct_document(node)


# YAML 1.2's floats (1e-4, -.5), after YAML 1.1's own resolvers: what those read as an int,
# a float (1.5, .inf, .nan) or a date stays so.
_GuardedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def _check_size(root: yaml.Node) -> None:
    """Count nodes with aliases expanded; refuse documents that blow up."""
    seen: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in seen:
            return seen[key]
        seen[key] = 1  # guards against recursive aliases
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        seen[key] = total
        if total > MAX_YAML_NODES:
            raise yaml.YAMLError(
                f"document expands to more than {MAX_YAML_NODES} nodes (alias bomb?)"
            )
        return total

    size(root)


@functools.lru_cache(maxsize=256)
def _parse(raw: bytes) -> Any:
    """Parsed once per content: expanding a sweep reads the same experiment files per cell."""
    return yaml.load(raw, Loader=_GuardedLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(raw: str | bytes) -> Any:
    """YAML text as Python values, by the one loader of every config, spec, profile and
    ``--set`` value (:class:`_GuardedLoader`)."""
    return copy.deepcopy(_parse(raw.encode() if isinstance(raw, str) else raw))


def read_yaml(path: str | Path, what: str = "") -> Any:
    """Safe-load a YAML file (every config, spec and profile); problems name the file.

    ``what`` names the kind of file in messages ('cannot read spec: ...').
    """
    path = Path(path)
    kind = f" {what}" if what else ""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read{kind}: {exc.strerror or exc}", str(path)) from None
    if len(raw) > MAX_YAML_BYTES:
        raise UserError(f"{what or 'file'} is larger than {MAX_YAML_BYTES} bytes", str(path))
    try:
        return load_yaml(raw)  # a copy: callers may change what they get
    except yaml.YAMLError as exc:
        text = str(exc).replace("\n", " ")
        if "could not determine a constructor" in text:
            text = "YAML tags such as !!python/... are not allowed: " + text
        raise UserError(f"not valid{kind} YAML: {text}", str(path)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """'model.pss.num_convs=3' -> ('model.pss.num_convs', 3); the value is YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override '{text}' is not of the form key=value", "--set")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise UserError(f"override '{text}': value is not valid YAML ({exc})", "--set") from None
    return key.strip(), value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def check_keys(tree: Any, model: type[BaseModel] | None = None, prefix: str = "") -> None:
    """Raise KeyError naming the first unknown dotted key and the nearest valid one.

    Done before validation so that a typo deep in a file or an override gets the
    nearest *dotted* key ('model.pss.num_convs'), which pydantic cannot give.
    """
    model = model or ExperimentConfig
    if not isinstance(tree, dict):
        return
    for key, value in tree.items():
        fields = model.model_fields
        if key not in fields:
            dotted = f"{prefix}{key}"
            valid = [f"{prefix}{f}" for f in fields]
            raise KeyError(f"unknown key '{dotted}'{nearest(dotted, valid)}")
        sub = _section_type(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            check_keys(value, sub, f"{prefix}{key}.")


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):  # Optional[Section]
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand(value: Any, name: str) -> Any:
    """${VAR} / ${VAR:-default} from the environment, ${name} for the experiment name."""
    if isinstance(value, dict):
        return {k: expand(v, name) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, name) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        var, default = match.group(1), match.group(2)
        if var == "name":
            return name
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise UserError(f"environment variable {var} is not set (used as ${{{var}}})")

    return _ENV.sub(sub, value)


def config_from_dict(tree: dict[str, Any], source: str) -> ExperimentConfig:
    """Validate a raw dict; errors name ``source`` and the dotted key."""
    if not isinstance(tree, dict):
        raise UserError("an experiment config must be a mapping of sections", source)
    try:
        check_keys(tree)
    except KeyError as exc:
        raise UserError(exc.args[0], source) from None
    tree = expand(tree, str(tree.get("name", "experiment")))
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        raise validation_error(exc, ExperimentConfig, source) from None


def add_config_arguments(
    parser: argparse.ArgumentParser, configs: bool = True, what: str = "a config value"
) -> None:
    """The command-line form of :func:`load_config`: ``CONFIG...`` (when ``configs``) and
    ``--set KEY=VALUE`` (repeatable), parsed into ``args.config`` and ``args.overrides``."""
    if configs:
        parser.add_argument("config", nargs="+", help="experiment YAML file(s), merged in order")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override {what} by its dotted key (YAML value); repeatable",
    )


def load_config(
    paths: str | Path | list[str | Path],
    overrides: list[str] | dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Read YAML files (merged in order), apply dotted overrides, validate.

    ``overrides`` are 'key=value' strings (YAML values) or a {key: value} dict.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    tree: dict[str, Any] = {}
    for path in paths:
        data = read_yaml(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError("an experiment config must be a mapping of sections", str(path))
        try:
            check_keys(data)
        except KeyError as exc:
            raise UserError(exc.args[0], str(path)) from None
        tree = deep_merge(tree, data)
    items = (
        overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    )
    source = ", ".join(str(p) for p in paths)
    for key, value in items:
        alone: dict[str, Any] = {}
        set_dotted(alone, key, value)
        try:
            check_keys(alone)  # this override's keys only: the files were checked above
        except KeyError as exc:
            raise UserError(f"override {exc.args[0]}", source) from None
        set_dotted(tree, key, value)
    return config_from_dict(tree, source)
