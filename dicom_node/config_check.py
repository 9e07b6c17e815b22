"""Problems of a configuration that loads but would fail at the first series.

Pydantic validates each field as the file is read (:mod:`dicom_node.config`);
what needs more than the file -- the pipelines that exist, model folders on
disk, label codes -- is checked here, for ``dicom-node check-config`` and the
console's configuration page alike.
"""

from __future__ import annotations

from dicom_node.config import Settings

__all__ = ["config_problems", "model_folder_problems", "redact_url", "unknown_pipelines"]


def config_problems(settings: Settings) -> list[str]:
    """Every problem found, each one line naming the config key."""
    return unknown_pipelines(settings) + model_folder_problems(settings)


def model_folder_problems(settings: Settings) -> list[str]:
    """``[[models]]`` folders (nnU-Net, MONAI bundle) that are missing, incomplete
    or name labels with no known code: found now, not at the first series."""
    folder_kinds = ("nnunetv2", "monai-bundle")
    if not any(m.kind in folder_kinds for m in settings.models):
        return []
    from ai_models.errors import AIModelsError
    from ai_models.label_codes import label_specs

    problems = []
    for i, (model, spec) in enumerate(zip(settings.models, settings.pipeline_specs(), strict=True)):
        if model.kind not in folder_kinds:
            continue
        try:
            spec.validate()
            label_specs(spec.label_names(), spec.labels, model=model.name)
        except (AIModelsError, ValueError, OSError) as exc:
            problems.append(f"models.{i} ({model.name}): {exc}")
    return problems


def unknown_pipelines(settings: Settings) -> list[str]:
    """Rules naming pipelines that are neither built in nor in ``[[models]]``."""
    if not any(rule.pipelines for rule in settings.rules):
        return []
    from ai_models.pipelines import list_pipelines

    known = {info.name for info in list_pipelines(settings.pipeline_specs())}
    return [
        f"rules.{i}.pipelines: rule {rule.name!r}: unknown pipeline {name!r} "
        f"(known: {', '.join(sorted(known))})"
        for i, rule in enumerate(settings.rules)
        for name in rule.pipelines
        if name not in known
    ]


def redact_url(url: str) -> str:
    """A database or broker URL with its password (if any) replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}" if ":" in cred else f"{scheme}{sep}{rest}"
    return url
