"""The user-facing errors of r2vpo-ascend (defined in :mod:`r2vpo_ascend.algos.errors`)."""
from r2vpo_ascend.algos.errors import *  # noqa: F401,F403
from r2vpo_ascend.algos.errors import __all__  # noqa: F401
