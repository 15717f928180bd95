"""Share PH-Reg adapters on the Hugging Face hub: fetch ``--adapter hf-hub:<user>/<repo>``, push a folder.

An adapter on the hub is the pair ``adapter.safetensors`` + ``adapter.json`` at the repo root (or under a
folder: ``hf-hub:<user>/<repo>/<folder>``), plus a generated model card ``README.md`` and, if the folder
had them, result files under ``results/``. Fetching goes through the local hub cache first and fails fast
offline (:mod:`phreg_bench.checkpoints.hub_spec`); pushing uses ``HfApi.create_repo`` and
``HfApi.upload_folder`` against ``HF_ENDPOINT`` (default https://huggingface.co), with the token from
``--token``, ``HF_TOKEN`` or ``hf auth login``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phreg_bench.checkpoints.hub_spec import HubSpec
from phreg_core.adapter_io import AdapterMismatchError, adapter_paths, read_sidecar
from phreg_core.errors import PhregError

if TYPE_CHECKING:
    from phreg_bench.results.records import ResultRecord

__all__ = ["PushError", "fetch_adapter", "model_card", "push_adapter"]

LOCAL_HINT = "pass `--adapter PATH` with a local copy of the adapter (adapter.safetensors + adapter.json)"
PHREG_CITATION = """@inproceedings{yan2025phreg,
  title     = {Vision Transformers with Self-Distilled Registers},
  author    = {Yan, Zipeng and Chen, Yinjie and Zhou, Chong and Dai, Bo and Luo, Andrew F.},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2025},
  note      = {arXiv:2505.21501}
}"""


class PushError(PhregError, ValueError):
    """An adapter folder that cannot be pushed as it is (missing, damaged or not an adapter)."""


def fetch_adapter(spec_text: str) -> Path:
    """Local path of ``adapter.safetensors`` for ``hf-hub:<user>/<repo>[/<folder>][@rev]`` (sidecar beside it)."""
    spec = HubSpec.parse(spec_text, what="--adapter")
    what = f"the PH-Reg adapter {spec_text!r} (adapter.json + adapter.safetensors)"
    sidecar = spec.fetch(["adapter.json"], what=what, local_hint=LOCAL_HINT)
    tensors = spec.fetch(["adapter.safetensors"], what=what, local_hint=LOCAL_HINT)
    if tensors.parent != sidecar.parent:  # both come from one snapshot unless the cache mixes revisions
        raise AdapterMismatchError(f"the hub cache holds adapter.json and adapter.safetensors of {spec_text!r} from "
                                   f"different revisions ({sidecar.parent.name} vs {tensors.parent.name}); name one "
                                   "with @<revision>")
    return tensors


# -- the model card -------------------------------------------------------------------------------------------
def _base_hub_repo(base_name: str | None) -> str | None:
    """The hub repo of a catalogue base backbone (for the card's ``base_model``), if it has one."""
    if not base_name:
        return None
    from phreg_bench.backbones.catalogue import BACKBONES

    for entry in BACKBONES:
        if base_name == entry.name or base_name in entry.aliases:
            return entry.metadata.get("hub")
    return None


def _results_table(results: list[ResultRecord]) -> list[str]:
    lines = ["| task | protocol | metric | value | samples | complete |", "|---|---|---|---|---|---|"]
    for record in results:
        identity, status = record.identity, record.status
        metric, value = ("", f"error: {status.error.type}") if status.error is not None else \
            (record.metrics.main, f"{record.metrics.score.value:.4g}")
        lines.append(f"| {identity.task.name} | {identity.protocol.name} | {metric} | {value} | "
                     f"{status.num_samples} | {'yes' if status.complete else 'no'} |")
    return lines


def _value(value: Any) -> str:
    return "—" if value is None else f"`{value}`"


def model_card(sidecar: dict[str, Any], repo_id: str, *, tensors_sha256: str,
               results: list[ResultRecord] | None = None, subfolder: str | None = None) -> str:
    """The ``README.md`` of a pushed adapter: base backbone, weights sha, student, recipe, diagnostics, results."""
    base = sidecar.get("base", {})
    student = sidecar.get("student", {})
    config = sidecar.get("config", {}) or {}
    extra = config.get("extra", {}) if isinstance(config.get("extra"), dict) else {}
    imported = sidecar.get("imported_from")
    hub_base = _base_hub_repo(base.get("name"))
    spec = f"hf-hub:{repo_id}" + (f"/{subfolder}" if subfolder else "")
    front = ["---", "library_name: phreg-bench", "tags:", "- ph-reg", "- registers", "- vision-transformer",
             "- dense-prediction"]
    if hub_base:
        front.append(f"base_model: {hub_base}")
    lines = [*front, "---", "", f"# PH-Reg adapter for `{base.get('name')}`", "",
             "Self-distilled registers (PH-Reg, *Vision Transformers with Self-Distilled Registers*, NeurIPS 2025) "
             "for the base backbone below. The files hold only the new register tokens and the weights the "
             "distillation changed; the base weights are not included and are checked by sha256 when loading.",
             "", "## Use", "", "```bash",
             f"phreg-bench run --backbone {base.get('name')} --adapter {spec} --tasks voc,ade", "```", "",
             "## Base backbone", "",
             f"- name: `{base.get('name')}`" + (f" (hub: `{hub_base}`)" if hub_base else ""),
             f"- weights sha256: `{base.get('weights_sha256')}`", "", "## Student", "",
             f"- registers: {sidecar.get('registers')} (placement `{student.get('placement')}`)",
             f"- last block: {_value(student.get('last_block'))}",
             f"- unlocked: {_value(sidecar.get('unlock'))}",
             f"- training grid of the positional embedding: {_value(student.get('train_grid'))}",
             f"- adapter tensors: {len(sidecar.get('tensors', {}))}, sha256 `{tensors_sha256}`", "", "## Recipe", ""]
    if imported:
        lines += [f"Converted with `phreg-bench adapter import --format {imported.get('format')}` from the authors' "
                  f"released student `{imported.get('file')}` (sha256 `{imported.get('file_sha256')}`): "
                  f"{imported.get('reference')}. {imported.get('frozen_tensors_checked')} frozen tensors were "
                  "checked against the base weights.", ""]
    else:
        keys = ("epochs", "batch_size", "lr", "lr_end", "weight_decay", "resolution", "views", "shift_frac",
                "mse_scale", "seed", "precision")
        # the preset name: Recipe.preset (older sidecars: config.extra.recipe)
        lines += [f"- recipe: {_value(config.get('preset', extra.get('recipe')))}"]
        lines += [f"- {key}: {_value(config.get(key))}" for key in keys if key in config]
        lines += [f"- teacher: {_value(sidecar.get('teacher'))}", ""]
    lines += ["## Diagnostics", "", f"- steps: {_value(sidecar.get('steps'))}",
              f"- final loss (1 − cos + MSE): {_value(sidecar.get('final_loss'))}",
              f"- skipped batches (non-finite loss): {_value(sidecar.get('skipped_batches'))}",
              f"- unreadable images: {_value(sidecar.get('corrupt_images'))}", ""]
    if results:
        lines += ["## Results", "", "Measured with phreg-bench (files under `results/`):", "",
                  *_results_table(results), ""]
    lines += ["## Citation", "", "```bibtex", PHREG_CITATION, "```", ""]
    return "\n".join(lines)


# -- pushing --------------------------------------------------------------------------------------------------
@dataclass
class PushPlan:
    """What a push uploads: the staged files (relative paths) and the card text."""

    files: list[str]
    card: str


def _verified_sidecar(folder: Path) -> tuple[dict[str, Any], Path, Path]:
    from phreg_core.hashing import file_sha256

    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder; pass the folder that holds adapter.safetensors + adapter.json")
    tensors, sidecar_path = adapter_paths(folder)
    try:
        sidecar = read_sidecar(sidecar_path)
    except (FileNotFoundError, ValueError) as error:
        raise PushError(str(error)) from error
    if not tensors.is_file():
        raise PushError(f"{tensors} is missing; an adapter is adapter.safetensors + adapter.json")
    if file_sha256(tensors) != sidecar.get("tensors_sha256"):
        raise PushError(f"{tensors} does not match the sha256 recorded in {sidecar_path.name}; refusing to upload "
                        "a damaged or edited adapter")
    return sidecar, tensors, sidecar_path


def _folder_results(folder: Path) -> list[tuple[Path, ResultRecord]]:
    from phreg_bench.results.store import read_result, result_files

    found = []
    for path in result_files(folder):
        found.append((path, read_result(path)))  # an invalid result file stops the push (ResultError)
    return found


def stage(folder: str | Path, staging: Path, repo_id: str, subfolder: str | None = None) -> PushPlan:
    """Copy what a push uploads into ``staging``: the adapter pair, results/ and the generated README.md."""
    folder = Path(folder)
    sidecar, tensors, sidecar_path = _verified_sidecar(folder)
    results = _folder_results(folder)
    files = [tensors.name, sidecar_path.name]
    shutil.copy2(tensors, staging / tensors.name)
    shutil.copy2(sidecar_path, staging / sidecar_path.name)
    for path, _record in results:
        relative = Path("results") / path.relative_to(folder)
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staging / relative)
        files.append(relative.as_posix())
    card = model_card(sidecar, repo_id, tensors_sha256=sidecar["tensors_sha256"],
                      results=[record for _, record in results], subfolder=subfolder)
    (staging / "README.md").write_text(card)
    files.append("README.md")
    return PushPlan(files=sorted(files), card=card)


def push_adapter(folder: str | Path, repo: str, *, private: bool = False, token: str | None = None,
                 commit_message: str | None = None, dry_run: bool = False) -> tuple[PushPlan, str | None]:
    """Create ``repo`` (if needed) and upload the adapter folder to its main branch.

    ``repo`` is ``<user>/<repo>`` or ``<user>/<repo>/<folder>``. Returns the plan and the commit URL
    (``None`` with ``dry_run``, which uploads nothing).
    """
    from phreg_bench.backbones.hub import HubUnavailableError, endpoint, unreachable_reason

    spec = HubSpec.parse(repo if repo.startswith("hf-hub:") else f"hf-hub:{repo}", what="--repo")
    if spec.revision:
        raise PushError(f"--repo {repo!r}: pushes go to the main branch; drop '@{spec.revision}'")
    with tempfile.TemporaryDirectory(prefix="phreg-push-") as temp:
        staging = Path(temp)
        plan = stage(folder, staging, spec.repo_id, spec.path)
        if dry_run:
            return plan, None
        reason = unreachable_reason(endpoint())
        if reason:
            raise HubUnavailableError(f"cannot push to {endpoint()}: {reason}. Nothing was uploaded; run the push "
                                      "again on a machine with internet (unset HF_HUB_OFFLINE), or check HF_ENDPOINT")
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint(), token=token)
        api.create_repo(spec.repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=spec.repo_id, folder_path=staging, path_in_repo=spec.path,
                                 repo_type="model", commit_message=commit_message or "Upload PH-Reg adapter "
                                 "with phreg-bench")
    return plan, getattr(info, "commit_url", str(info))
