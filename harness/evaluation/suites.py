"""Zero-shot task names: the supported lm-eval tasks, the papers' suites, and the one parser of a
task list. Import-light (no lm-eval), so the CLI can validate `--tasks` before any work."""

from __future__ import annotations

from harness.errors import HarnessError

TASK_DIRS = {
    "mmlu": "mmlu/default",
    "piqa": "piqa",
    "arc_easy": "arc",
    "arc_challenge": "arc",
    "winogrande": "winogrande",
    "openbookqa": "openbookqa",
    "boolq": "super_glue/boolq",
    "rte": "glue/rte",
    "hellaswag": "hellaswag",
}
"""The supported lm-eval names (tasks; `mmlu` is a group) and where their official YAML lives
inside `lm_eval/tasks`."""

SUITES: dict[str, list[str]] = {
    "leap6": ["mmlu", "piqa", "arc_easy", "arc_challenge", "winogrande", "openbookqa"],
    "wanda7": ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"],
}


def resolve_tasks(spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """'leap6' | 'wanda7' | 'piqa,arc_easy' | mixtures -> ordered, de-duplicated lm-eval task names.
    None, '' or 'none' -> [] (skip zero-shot). Unknown names raise one HarnessError line."""
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (p.strip().lower() for p in parts):
        if part in ("", "none"):
            continue
        if part in SUITES:
            names.extend(SUITES[part])
        elif part in TASK_DIRS:
            names.append(part)
        else:
            valid = ", ".join([*SUITES, *TASK_DIRS])
            raise HarnessError(f"unknown zero-shot task {part!r}; valid: {valid}, or 'none'")
    return list(dict.fromkeys(names))
