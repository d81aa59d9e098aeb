"""hf_lwmm: layer-wise merging of SegFormer-style segmentation models, integrated with the Hugging Face Hub.

The stable API::

    from hf_lwmm import MergeRecipe, RunOptions, plan_merge, execute, merge

    recipe = MergeRecipe(models=["org/a", "org/b"], method="layerwise", parameters={"alpha": 0.5})
    plan = plan_merge(recipe, RunOptions(device="cpu"))   # resolves, aligns, checks: no weight bytes read
    result = execute(plan, "merged")                       # streams the weights, writes card and recipe
    # or in one step: merge(recipe, "merged", RunOptions(...))

Pipeline layers, lowest first (no module imports one above it): errors, schedules, layers, system,
plotting → refs, io → align → methods → recipe → plan → result → card → merge → evaluation, diff,
hub, demo → commands, cli.
"""

import gc

#: the package's version (pyproject.toml reads it from here; no metadata lookup at import)
__version__ = "0.1.0"

# Importing torch and pydantic makes hundreds of thousands of objects that live as long as the process. The garbage
# collector's passes over them while they are imported find nothing and cost 0.16 s, so it waits until the import is
# done. Then, instead of one 0.08 s pass of the youngest generation over them all, they go straight to the oldest
# (gc.unfreeze puts the frozen objects there), unless the caller has frozen objects of their own to keep frozen.
_collecting = gc.isenabled()
gc.disable()
try:
    from hf_lwmm.errors import LwmmError, RecipeError, RunOptionError
    from hf_lwmm.merge import execute, merge
    from hf_lwmm.plan import MergePlan, plan_merge
    from hf_lwmm.recipe import MergeRecipe, RunOptions, load_recipe
    from hf_lwmm.result import MergeResult
finally:
    if not gc.get_freeze_count():
        gc.freeze()
        gc.unfreeze()
    if _collecting:
        gc.enable()

__all__ = ["LwmmError", "MergePlan", "MergeRecipe", "MergeResult", "RecipeError", "RunOptionError", "RunOptions",
           "execute", "load_recipe", "merge", "plan_merge", "__version__"]
