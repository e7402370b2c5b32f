"""The values the data options take, in a module that imports nothing (no numpy, no PIL): the command line's
parser and ``--help`` offer them without loading the readers."""

DATASETS = ("mvtec", "visa", "btad", "mpdd", "mtd", "folder")
"""Layouts ``read_dataset`` reads."""
CLI_DATASETS = DATASETS + ("loco",)
"""Layouts a category's sources come from (``category_sources``): the readers' and MVTec LOCO's."""
SPLITS = ("official", "balanced")
"""How a pooling method's test set is split into subsets: ``official_subsets`` or ``stratified_subsets``."""
