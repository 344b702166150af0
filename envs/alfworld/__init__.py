"""ALFWorld on the real ``alfworld``/TextWorld engine (text-only household tasks).

Importing this package is cheap: ``alfworld`` and ``textworld`` load when an env is built.
"""

from stepgym.envs.alfworld.env import SPLITS, SUBSETS, TASK_TYPE_OF_FOLDER, ALFWorldEnv, list_games

__all__ = ["SPLITS", "SUBSETS", "TASK_TYPE_OF_FOLDER", "ALFWorldEnv", "list_games"]
