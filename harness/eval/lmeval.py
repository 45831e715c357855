"""Evaluator ``lmeval``: any lm-evaluation-harness task on the in-memory (quantized) model.

Contract
--------
The model is wrapped as ``HFLM(pretrained=model, tokenizer=tok, batch_size=...)`` (or
:class:`bitsweep.harness.eval.prepack.PrepackedHFLM` when ``packing=true``) and handed to
``lm_eval.simple_evaluate`` with a ``TaskManager`` whose include path always holds
bitsweep's packaged local tasks (``harness/tasks``; task names such as
``stdlib_nextline`` resolve without configuring a path) plus any ``include_path`` given.
Everything else -- few-shot sampling, metrics, stderrs -- is lm-eval's own, so the numbers
equal a direct ``simple_evaluate`` call on the same model (tested).

Returns one :class:`MetricRow` per task x metric x filter: ``name`` is the metric
(``acc``), ``value`` and ``stderr`` come from lm-eval's ``<metric>,<filter>`` and
``<metric>_stderr,<filter>`` (``"N/A"`` -> ``None``), tags carry ``task``, ``n_shot``,
``filter`` and ``limit``. Task versions, sample counts, seeds and each task's YAML
``metadata`` (e.g. the corpus fingerprint of a local task) go to
``ctx.record_extra["lmeval"]``.

Bad input fails fast with one line: an unknown task name (with close names from
``TaskManager.all_tasks``), a malformed local task YAML / jsonl (file and line), or a
task that needs the Hugging Face hub while offline or while the hub is unreachable (a
3-second probe instead of minutes of retries).

Trade-off: when every requested task is local, lm-eval's ~15k built-in task YAMLs are
not indexed (``include_defaults=False``), which saves ~20 s per run on a small CPU.
"""
from __future__ import annotations

import difflib
import logging
import math
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bitsweep.harness.eval.base import EvalContext, Evaluator, MetricRow, register_evaluator
from bitsweep.harness.tasks import TASKS_DIR, LocalTaskError, read_task_yaml

log = logging.getLogger(__name__)

#: lm-eval's own defaults (``simple_evaluate``); ``seed: null`` keeps them.
LMEVAL_DEFAULT_SEEDS = {"random_seed": 0, "numpy_random_seed": 1234,
                        "torch_random_seed": 1234, "fewshot_random_seed": 1234}
HUB_PROBE_TIMEOUT_S = 3.0


class UnknownTaskError(ValueError):
    """A task name that lm-eval's TaskManager does not know."""


class HubUnavailableError(RuntimeError):
    """A task needs the Hugging Face hub, which is offline or unreachable."""


@dataclass(frozen=True)
class LmevalConfig:
    """Fields of ``eval.lmeval`` (see conf/eval/lmeval.yaml)."""

    tasks: tuple[str, ...] = ()
    num_fewshot: int | None = None      # None: each task's own default
    limit: float | None = None          # examples per task (int) or fraction (<1); None: all
    batch_size: int | str = 8           # int, "auto" or "auto:N"
    max_batch_size: int = 64            # upper bound for batch_size=auto
    seed: int | None = None             # None: lm-eval defaults (0/1234/1234/1234); int: all four
    fewshot_as_multiturn: bool = False
    apply_chat_template: bool = False
    system_instruction: str | None = None
    gen_kwargs: str | None = None       # generation tasks, e.g. "temperature=0,max_gen_toks=256"
    include_path: tuple[str, ...] = ()  # extra task folders (bitsweep's own are always included)
    packing: bool = False               # prepacked scoring of loglikelihood requests
    max_length: int | None = None       # model context for lm-eval (and pack row length)
    bootstrap_iters: int = 100000       # lm-eval default; stderr of non-mean metrics

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            object.__setattr__(self, "tasks", (self.tasks,))
        if isinstance(self.include_path, str):
            object.__setattr__(self, "include_path", (self.include_path,))
        if not self.tasks:
            raise ValueError("eval.lmeval.tasks is empty; name at least one lm-eval task, "
                             "e.g. tasks: [stdlib_nextline]")
        if isinstance(self.batch_size, str) and not self.batch_size.startswith("auto"):
            raise ValueError(f"eval.lmeval.batch_size={self.batch_size!r}; use an int, 'auto' or 'auto:N'")

    def seeds(self) -> dict[str, int]:
        if self.seed is None:
            return dict(LMEVAL_DEFAULT_SEEDS)
        return {key: int(self.seed) for key in LMEVAL_DEFAULT_SEEDS}


# ----------------------------------------------------------------------------- tasks


def include_roots(extra: tuple[str, ...] = ()) -> list[Path]:
    """bitsweep's packaged task folder, then the user's extra folders (which must exist)."""
    roots = [TASKS_DIR]
    for item in extra:
        path = Path(item).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"eval.lmeval.include_path: {item!r} is not a directory")
        roots.append(path)
    return roots


def scan_local_tasks(roots: list[Path]) -> dict[str, Path]:
    """Task name -> YAML path for every task YAML under ``roots``; malformed YAML -> file:line error."""
    found: dict[str, Path] = {}
    for root in roots:
        for path in sorted(root.rglob("*.yaml")):
            if "__pycache__" in path.parts:
                continue
            cfg = read_task_yaml(path)
            name = cfg.get("task")
            if isinstance(name, str):
                found[name] = path
            for key in ("group", "tag"):
                val = cfg.get(key)
                for item in [val] if isinstance(val, str) else (val or []):
                    if isinstance(item, str):
                        found.setdefault(item, path)
    return found


def check_local_data(name: str, yaml_path: Path) -> None:
    """Parse a local task's jsonl files now, so a bad line fails with file:line before any model call."""
    from bitsweep.harness.tasks import load_jsonl

    cfg = read_task_yaml(yaml_path)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if cfg.get("dataset_path") != "json" or not files:
        return
    files = {"test": files} if isinstance(files, str) else files
    for rel in (files.values() if isinstance(files, dict) else files):
        path = Path(rel) if Path(rel).is_absolute() else yaml_path.parent / rel
        load_jsonl(path)
    log.debug("local task %s: data files parsed", name)


def make_task_manager(tasks: tuple[str, ...], roots: list[Path]):
    """A TaskManager that knows every name in ``tasks``; unknown names -> UnknownTaskError."""
    from lm_eval.tasks import TaskManager

    local = scan_local_tasks(roots)
    all_local = all(t in local for t in tasks)
    manager = TaskManager(include_path=[str(r) for r in roots], include_defaults=not all_local)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            raise unknown_task_error(task, manager.all_tasks)
    return manager, local


def unknown_task_error(task: str, known: list[str]) -> UnknownTaskError:
    """One line naming ``task`` and up to 5 close names among ``known``."""
    close = difflib.get_close_matches(task, known, n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; list tasks with `lm_eval ls tasks`"
    return UnknownTaskError(f"unknown lm-eval task '{task}'{hint}")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether the user declared the hub offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the hub endpoint within ``timeout`` seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_hub(hub_tasks: list[str]) -> None:
    """Fail at once, naming the tasks, when hub tasks are requested but the hub is unreachable."""
    if not hub_tasks or hub_offline():
        return  # offline flag: datasets may still load them from the local cache
    if not hub_reachable():
        raise HubUnavailableError(
            f"lm-eval task(s) {', '.join(hub_tasks)} need the Hugging Face hub, which is not reachable "
            f"from this machine; run where the hub is reachable, or set HF_HUB_OFFLINE=1 "
            f"HF_DATASETS_OFFLINE=1 if their datasets are in the local cache")


# ----------------------------------------------------------------------------- results


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def metric_rows(results: dict, limit: float | None) -> list[MetricRow]:
    """One MetricRow per task x metric x filter of a ``simple_evaluate`` result."""
    rows: list[MetricRow] = []
    n_shot = results.get("n-shot", {})
    groups = set(results.get("groups", {}))
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            val = _num(value)
            if val is None:
                continue
            tags = {"task": task, "n_shot": n_shot.get(task), "filter": filt}
            if limit is not None:
                tags["limit"] = limit
            if task in groups:
                tags["group"] = True
            stderr = _num(metrics.get(f"{metric}_stderr,{filt}"))
            rows.append(MetricRow(name=metric, value=val, stderr=stderr, tags=tags))
    return rows


def record_extra(results: dict, config: LmevalConfig) -> dict[str, Any]:
    """What the results store keeps besides the metric rows."""
    configs = results.get("configs", {})
    return {
        "versions": dict(results.get("versions", {})),
        "n_samples": dict(results.get("n-samples", {})),
        "n_shot": dict(results.get("n-shot", {})),
        "task_metadata": {t: (c or {}).get("metadata") for t, c in configs.items()},
        "lm_eval_version": results.get("lm_eval_version"),
        "seeds": config.seeds(),
        "packing": config.packing,
    }


# ----------------------------------------------------------------------------- evaluation


def build_lm(model, tokenizer, config: LmevalConfig):
    """The lm-eval model wrapper: HFLM, or PrepackedHFLM when ``config.packing``."""
    kwargs = {"pretrained": model, "tokenizer": tokenizer, "batch_size": config.batch_size,
              "max_batch_size": config.max_batch_size, "max_length": config.max_length}
    if config.packing:
        from bitsweep.harness.eval.prepack import PrepackedHFLM

        return PrepackedHFLM(**kwargs)
    from lm_eval.models.huggingface import HFLM

    return HFLM(**kwargs)


def run_lmeval(model, tokenizer, config: LmevalConfig, lm=None) -> dict:
    """Validate tasks, then ``simple_evaluate``; return lm-eval's result dict."""
    import lm_eval

    roots = include_roots(config.include_path)
    manager, local = make_task_manager(config.tasks, roots)
    for task in config.tasks:
        if task in local:
            check_local_data(task, local[task])
    hub_tasks = [t for t in config.tasks if t not in local]
    check_hub(hub_tasks)
    lm = lm if lm is not None else build_lm(model, tokenizer, config)
    log.info("lm-eval %s on %s (num_fewshot=%s, limit=%s, batch_size=%s, packing=%s)",
             getattr(lm_eval, "__version__", "?"), ", ".join(config.tasks), config.num_fewshot,
             config.limit, config.batch_size, config.packing)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=list(config.tasks), task_manager=manager,
            num_fewshot=config.num_fewshot, limit=config.limit,
            bootstrap_iters=config.bootstrap_iters, log_samples=False,
            apply_chat_template=config.apply_chat_template,
            fewshot_as_multiturn=config.fewshot_as_multiturn,
            system_instruction=config.system_instruction, gen_kwargs=config.gen_kwargs,
            **config.seeds(),
        )
    except ConnectionError as err:  # datasets' "Couldn't reach ... on the Hub" / OfflineModeIsEnabled
        raise HubUnavailableError(
            f"lm-eval task(s) {', '.join(hub_tasks) or ', '.join(config.tasks)} need the Hugging Face "
            f"hub, which is offline here (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and their datasets are "
            f"not in the local cache: {err}") from None
    if results is None:
        raise RuntimeError("lm_eval.simple_evaluate returned no results (non-zero rank?)")
    return results


@register_evaluator("lmeval")
class LmEval(Evaluator):
    """lm-evaluation-harness tasks; see the module docstring."""

    Config = LmevalConfig

    def evaluate(self, model, tokenizer, ctx: EvalContext) -> list[MetricRow]:
        results = run_lmeval(model, tokenizer, self.config)
        extra = record_extra(results, self.config)
        extra["config"] = asdict(self.config)
        ctx.record_extra.setdefault("lmeval", {}).update(extra)
        rows = metric_rows(results, self.config.limit)
        for row in rows:
            log.info("%s %s = %.4f ± %s", row.tags["task"], row.name, row.value, row.stderr)
        return rows


__all__ = ["LmEval", "LmevalConfig", "UnknownTaskError", "HubUnavailableError", "LocalTaskError",
           "run_lmeval", "metric_rows", "make_task_manager"]
