"""The distill path, top to bottom: recipe, prompts, teacher, candidates (resumable), filter, files."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from finetune import atomic
from finetune.compare.quality import LOOP_SHARE
from finetune.distill import DistillError
from finetune.distill.prompts import Selection, select_prompts
from finetune.errors import FinetuneError
from finetune.recipe import DistillConfig, Recipe, load_recipe

FORMAT_VERSION = 1


@dataclass
class DistillOptions:
    """Everything `finetune distill` accepts (the CLI fills it; tests build it directly)."""

    recipe_path: Path
    prompts: str | None = None  # overrides distill.prompts
    n: int | None = None
    teacher: str | None = None
    teacher_model: str | None = None
    candidates: int | None = None
    out: Path | None = None
    allow_remote_teacher: bool = False
    force: bool = False
    overrides: list[str] = field(default_factory=list)
    dtype: str = "auto"


@dataclass(frozen=True)
class Files:
    """What one distillation writes: the training data and, beside it, its working and audit files."""

    data: Path  # chat JSONL in our format, written at the end (atomically)
    candidates: Path  # every sampled reply, appended one prompt at a time (the resume log)
    scores: Path  # every candidate with its scores, kept or dropped and why
    provenance: Path  # teacher, prompts, sampling, thresholds, counts

    @classmethod
    def beside(cls, data: Path) -> Files:
        """The file set named after the data file's stem."""
        stem = data.name.removesuffix(".jsonl")
        return cls(data, data.with_name(f"{stem}.candidates.jsonl"), data.with_name(f"{stem}.scores.jsonl"),
                   data.with_name(f"{stem}.provenance.json"))


def file_has_distill(recipe_path: Path) -> bool:
    """Whether the recipe FILE has a `distill:` section (a `--set distill.*` override does not count)."""
    try:
        data = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # load_recipe has read this file already; it reports any problem with it
    return isinstance(data, dict) and data.get("distill") is not None


def output_path(recipe: Recipe, out: Path | None, file_has_distill: bool) -> Path:
    """--out, else dataset.path for a recipe file with a distill section, else outputs/<name>.distill/data.jsonl."""
    from finetune.paths import outputs_dir

    if out is not None:
        return out
    # Only the recipe file itself says "my dataset is distilled": a `--set distill.min_style=...` on a recipe
    # with a hand-written dataset creates a distill section too, and must not aim the output at that file.
    if file_has_distill:
        return Path(recipe.dataset.path)
    # Not inside outputs/<name>/: that is the training run's folder, and `train --force` empties it.
    return outputs_dir() / f"{recipe.name}.distill" / "data.jsonl"


def _config(recipe: Recipe, opts: DistillOptions) -> DistillConfig:
    """The recipe's distill section (or the defaults) with the command-line overrides applied."""
    cfg = recipe.distill or DistillConfig()
    updates = {
        "prompts": opts.prompts, "n": opts.n, "teacher": opts.teacher, "teacher_model": opts.teacher_model,
        "candidates": opts.candidates,
    }
    return cfg.model_copy(update={k: v for k, v in updates.items() if v is not None})


def _persona(recipe: Recipe, path: Path) -> str:
    """The persona prompt to distill; one-line error when the recipe has none."""
    persona = (recipe.system_prompt or "").strip()
    if not persona:
        raise DistillError(
            f"{path}: system_prompt is missing or empty; distillation turns the persona prompt into data, "
            "so the recipe needs one (system_prompt: \"You are ...\")"
        )
    return persona


def _check_output(files: Files, own_data: dict[str, Any] | None, force: bool) -> None:
    """Never overwrite a file that distill did not write (a hand-made dataset), or one edited since it wrote
    it (its hash no longer the provenance's), without --force."""
    if not files.data.exists() or own_data is not None or force:
        return
    if files.provenance.exists():
        raise DistillError(
            f"{files.data}: changed since finetune distill wrote it (not the file {files.provenance.name} "
            "records); choose another --out or pass --force to replace it"
        )
    if not files.candidates.exists():
        raise DistillError(
            f"{files.data}: exists and was not written by finetune distill; choose another --out or pass --force"
        )


def _settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _earlier_record(files: Files) -> dict[str, Any]:
    """The provenance an earlier run left ({} when there is none or it is unreadable)."""
    try:
        record = json.loads(files.provenance.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _own_data(files: Files, earlier: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier provenance's description of the data file distill wrote, while the file is still exactly that.

    Its hash is how distill tells its own data file (which it may replace or remove) from one a user wrote
    or edited since (which it never removes).
    """
    data = earlier.get("data")
    try:
        if isinstance(data, dict) and files.data.is_file() and _sha256(files.data) == data["sha256"]:
            return data
    except (OSError, KeyError):
        pass
    return None


def _changed_settings(files: Files, generation: dict[str, Any], log_keys: set[Any]) -> str:
    """Which generation settings differ from the log's, when the provenance still describes the log."""
    earlier = _earlier_record(files).get("generation")
    if isinstance(earlier, dict) and {_settings_key(earlier)} == log_keys:
        changed = [k for k in generation if earlier.get(k) != generation[k]]
        if changed:
            return ", ".join(f"{k}: {earlier.get(k)!r} -> {generation[k]!r}" for k in changed)
    # What the key holds; the prompts are not in it (another prompt set reuses the finished prompts).
    return "one of " + ", ".join(k for k in generation if k != "format")


def _resume_log(
    files: Files, generation: dict[str, Any], wanted: set[str], force: bool
) -> dict[str, dict[str, Any]]:
    """Finished prompts from an earlier (killed) run with the same settings; the log rewritten clean.

    --force starts over: distill's own log is discarded and every prompt is generated again.
    """
    if not files.candidates.exists():
        return {}
    if force:
        files.candidates.unlink()
        return {}
    key = _settings_key(generation)
    records = atomic.read_jsonl(files.candidates)
    log_keys = {r.get("settings_key") for r in records}
    if log_keys - {key}:
        raise DistillError(
            f"{files.candidates}: was written with other generation settings "
            f"({_changed_settings(files, generation, log_keys)}); pass --force to start over, or --out to keep both"
        )
    logged: dict[str, dict[str, Any]] = {}
    for record in records:
        if isinstance(record.get("prompt_id"), str) and record["prompt_id"] not in logged:
            logged[record["prompt_id"]] = record
    # Rewrite without a torn last line or duplicates, so the next append starts on a fresh line. Prompts this
    # run does not want stay logged: a smaller --n now and a larger one later generates nothing twice.
    atomic.write_text(files.candidates, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in logged.values()))
    return {i: r for i, r in logged.items() if i in wanted}


def run_distill(opts: DistillOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Distill the recipe's persona prompt into a chat JSONL; returns the provenance record."""
    started = time.perf_counter()
    # 1. Recipe, persona, settings, where the files go.
    recipe = load_recipe(opts.recipe_path, opts.overrides)
    persona = _persona(recipe, opts.recipe_path)
    cfg = _config(recipe, opts)
    if cfg.teacher and "://" in cfg.teacher:
        from finetune.distill.teacher import check_endpoint

        check_endpoint(cfg.teacher, opts.allow_remote_teacher)  # before the base model loads, not after
    files = Files.beside(output_path(recipe, opts.out, file_has_distill(opts.recipe_path)))
    # Read before this run writes anything: the earlier run's teacher and whether the data file is distill's.
    earlier = _earlier_record(files)
    own_data = _own_data(files, earlier)
    _check_output(files, own_data, opts.force)

    # 2. Prompts: deduplicated, compare's evaluation prompts removed, seeded order.
    selection: Selection = select_prompts(recipe, cfg.prompts, cfg.n, cfg.seed, files.data)
    wanted = [p.id for p in selection.prompts]

    # 3. Teacher and the plain student (the base model without the persona: the voice to move away from).
    from finetune.compare.generation import resolve_dtype
    from finetune.distill.teacher import LocalTeacher, make_teacher

    dtype, _device = resolve_dtype(opts.dtype)
    generation = {
        "persona": persona,
        "teacher": cfg.teacher or recipe.base_model,
        "teacher_model": cfg.teacher_model,
        "student": recipe.base_model,
        "candidates": cfg.candidates,
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "dtype": dtype,
        "format": FORMAT_VERSION,
    }
    key = _settings_key(generation)
    provenance = _Provenance(files, recipe, opts, cfg, selection, generation, _earlier_teacher(earlier), own_data)
    done = _resume_log(files, generation, set(wanted), opts.force)
    pending = [p for p in selection.prompts if p.id not in done]
    say(
        f"distill {recipe.name}: {len(wanted)} prompts from {selection.source} ({selection.duplicates} duplicates, "
        f"{selection.reserved} of compare's prompts set aside), {cfg.candidates} candidates each; "
        f"{len(done)} already done"
    )
    try:
        if pending:
            base = LocalTeacher(recipe, None, dtype, cfg.batch_size)
            teacher = make_teacher(cfg.teacher, recipe, base, cfg.teacher_model, cfg.timeout,
                                   opts.allow_remote_teacher, dtype, cfg.batch_size)
            provenance.teacher = teacher.describe()
            if provenance.teacher["system_prompt"] != "system turn":
                say(f"note: the teacher's chat template has no system role; the persona is "
                    f"{provenance.teacher['system_prompt']}")
            provenance.write("running")
            # 4. Candidates, one chunk of prompts at a time, each prompt appended as soon as it is done.
            files.data.parent.mkdir(parents=True, exist_ok=True)
            _generate(pending, teacher, base, persona, cfg, key, files, done)

        # 5. Filter with compare's scorers; write every score, the data and the provenance.
        from finetune.compare.metrics import compile_markers
        from finetune.distill.filter import Thresholds, filter_effect, score_candidates

        records = [done[i] for i in wanted]
        thresholds = Thresholds(cfg.min_style, cfg.min_content)
        rows, classifier_info = score_candidates(records, compile_markers(recipe.style.markers), thresholds)
        kept = {r["prompt_id"]: r for r in rows if r["kept"]}
        data_lines = []
        for record in records:
            if record["prompt_id"] in kept:
                messages = [*record["messages"], {"role": "assistant", "content": kept[record["prompt_id"]]["text"]}]
                data_lines.append(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        atomic.write_text(files.scores, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        result = {
            "prompts": len(records),
            "kept": len(data_lines),
            "dropped": len(records) - len(data_lines),
            "candidates": len(rows),
            "candidates_passed": sum(r["passed"] for r in rows),
            "drop_reasons": _reason_counts(rows),
            "filter_effect": filter_effect(rows),
            "classifier": classifier_info,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        if not data_lines:
            _nothing_kept(provenance, result)
        text = "".join(data_lines)
        atomic.write_text(files.data, text)
        provenance.data = {
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "rows": len(data_lines),
            "min_style": cfg.min_style, "min_content": cfg.min_content,
        }
        return provenance.write("done", result)
    except BaseException as exc:
        # A provenance never says "running" after this process has ended: it names how the run ended
        # (a refused endpoint, a full disk, Ctrl-C); the prompts already finished stay in the log.
        if provenance.status == "running":
            provenance.write("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                             error=_one_line(exc))
        raise


def _nothing_kept(provenance: _Provenance, result: dict[str, Any]) -> None:
    """Record a filter that kept nothing so that the scores, the provenance and the data agree; raise."""
    files, cfg = provenance.files, provenance.cfg
    # A data file distill wrote (for other thresholds or prompts) would still look valid, and `finetune train`
    # would read rows this filter rejected: it goes. The logged candidates stay, so a rerun with lower
    # thresholds regenerates nothing. A file distill did not write (a dataset taken over with --force, or
    # distill's file edited since) is never removed.
    if provenance.data is not None:
        files.data.unlink(missing_ok=True)
        provenance.data = None
        data_note = f"; removed {files.data}, which an earlier distill run wrote"
    elif files.data.exists():
        data_note = f"; {files.data} is not a file distill wrote (or was edited since) and is left as it was"
    else:
        data_note = ""
    message = (
        f"{files.scores}: no candidate passed the filter (min_style {cfg.min_style}, min_content "
        f"{cfg.min_content}); read the reasons there, then lower the thresholds or raise max_new_tokens{data_note}"
    )
    provenance.write("failed", result, error=message)
    raise DistillError(message)


def _one_line(exc: BaseException) -> str:
    """An exception as the one line the provenance records."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, FinetuneError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _generate(pending: list, teacher: Any, base: Any, persona: str, cfg: DistillConfig, key: str, files: Files,
              done: dict[str, dict[str, Any]]) -> None:
    """Sample candidates and the plain reply for each pending prompt; append each prompt's record."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("distilling"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    from finetune.console import err_console

    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("distill", total=len(pending))
        for start in range(0, len(pending), cfg.batch_size):
            chunk = pending[start : start + cfg.batch_size]
            messages = [p.messages for p in chunk]
            # The seed follows the prompts, not their position: a resumed run samples as a fresh one would.
            seed = cfg.seed + int(chunk[0].id[:6], 16)
            sampled = teacher.sample(messages, persona, cfg.candidates, cfg.max_new_tokens, cfg.temperature, seed)
            plain = base.greedy(messages, cfg.max_new_tokens)
            for prompt, candidates, reply in zip(chunk, sampled, plain, strict=True):
                record = {
                    "prompt_id": prompt.id, "settings_key": key, "messages": prompt.messages,
                    "candidates": [_reply(c) for c in candidates], "base": _reply(reply),
                }
                atomic.append_jsonl(files.candidates, record)
                done[prompt.id] = record
                progress.advance(task)


def _earlier_teacher(earlier: dict[str, Any]) -> dict[str, Any]:
    """The teacher recorded by the run that wrote the candidates (when nothing is left to generate)."""
    teacher = earlier.get("teacher")
    return teacher if isinstance(teacher, dict) else {"kind": "unknown"}


def _reply(reply: Any) -> dict[str, Any]:
    return {"text": reply.text, "completion_tokens": reply.completion_tokens, "ended": reply.ended,
            "latency_s": round(reply.latency_s, 3)}


def _reason_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        for reason in row["reasons"]:
            name = reason.split(" ")[0] if reason[0].isalpha() and " < " in reason else reason
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass
class _Provenance:
    """The provenance file of one run: fixed once the prompts are chosen, rewritten at each change of status."""

    files: Files
    recipe: Recipe
    opts: DistillOptions
    cfg: DistillConfig
    selection: Selection
    generation: dict[str, Any]
    teacher: dict[str, Any]
    # The data file as distill wrote it (sha256, rows, thresholds), while it is still that file; None when the
    # file at files.data is absent or not distill's. Carried from run to run until distill replaces the file.
    data: dict[str, Any] | None
    status: str | None = None  # what this process last wrote (None: nothing yet)

    def write(self, status: str, result: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
        """Write the provenance: enough to know where every row came from and to redo it."""
        files, recipe, cfg, selection = self.files, self.recipe, self.cfg, self.selection
        record = {
            "format": FORMAT_VERSION,
            "status": status,  # running, done, failed (see error) or interrupted
            "error": error,
            "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "recipe": str(self.opts.recipe_path),
            "recipe_name": recipe.name,
            "teacher": self.teacher,
            "generation": self.generation,
            "prompts": {"source": selection.source, "rows": selection.total, "duplicates": selection.duplicates,
                        "reserved_for_compare": selection.reserved, "selected": len(selection.prompts),
                        "ids": [p.id for p in selection.prompts]},
            "thresholds": {"min_style": cfg.min_style, "min_content": cfg.min_content,
                           "loop_share": LOOP_SHARE,
                           "must_end_turn": True},
            "style_markers": recipe.style.markers,
            "files": {"data": str(files.data), "candidates": str(files.candidates), "scores": str(files.scores),
                      "recipe_dataset": files.data.resolve() == Path(recipe.dataset.path).resolve()},
            "data": self.data,
            "result": result,
        }
        atomic.write_json(files.provenance, record)
        self.status = status
        return record
