"""The zoo as the experiments see it: its models by role, read from ``zoo.json`` (``scripts/build_zoo.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hf_lwmm.errors import LwmmError

MANIFEST = "zoo.json"
#: zoo roles of the models that share the base's classes and head: the merge pool
POOL_ROLES = ("base", "strategy")
COARSE_ROLE = "class-set variant"
WIDE_HEAD_ROLE = "head-width variant"


@dataclass(frozen=True)
class ZooModel:
    name: str
    role: str
    num_labels: int
    decoder_hidden_size: int
    #: the mIoU the zoo's card records for dusk/val (a cross-check of the experiments' evaluation)
    card_dusk_val: float | None
    sha256: str | None


@dataclass(frozen=True)
class Zoo:
    """The zoo's folders by role."""

    root: Path
    models: dict[str, ZooModel]
    #: one run's checkpoint folders in step order; the last is the run's final model
    checkpoints: list[str]
    #: the distinct code commits that trained the models (``unknown`` for a model that records none)
    code_commits: list[str]

    def folder(self, name: str) -> str:
        return str(self.root / name)

    def with_role(self, *roles: str) -> list[str]:
        return [name for name, model in self.models.items() if model.role in roles]

    @property
    def pool(self) -> list[str]:
        return self.with_role(*POOL_ROLES)

    def variant(self, role: str) -> str | None:
        found = self.with_role(role)
        return found[0] if found else None


def load_zoo(root: Path) -> Zoo:
    """Read ``zoo.json`` (models with role, classes, head width and hash; checkpoint series) and check the folders."""
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        models = {entry["name"]: ZooModel(entry["name"], entry["role"], int(entry["num_labels"]), int(entry["decoder_hidden_size"]),
                                          (entry.get("scores") or {}).get("dusk_val"), entry.get("sha256"))
                  for entry in manifest["models"]}
        series = list(manifest.get("checkpoint_series", {}).values())
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LwmmError(f"--zoo {root}: no readable {MANIFEST} ({err.__class__.__name__}); "
                        "build the zoo with scripts/build_zoo.py") from None
    missing = [name for name in models if not (Path(root) / name / "config.json").is_file()]
    if missing:
        raise LwmmError(f"--zoo {root}: model folder {missing[0]} listed in {MANIFEST} is missing or incomplete")
    complete_series = [names for names in series if all(name in models for name in names)]  # a build in progress lists future folders
    commits = list(dict.fromkeys(str(entry.get("code_commit") or "unknown") for entry in manifest["models"]))
    zoo = Zoo(Path(root), models, complete_series[0] if complete_series else [], commits)
    shapes = {(models[name].num_labels, models[name].decoder_hidden_size) for name in zoo.pool}
    if len(zoo.pool) < 2 or len(shapes) != 1:
        raise LwmmError(f"--zoo {root}: needs ≥ 2 models with roles {', '.join(POOL_ROLES)} sharing classes and head width")
    return zoo
