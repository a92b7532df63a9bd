"""R²VPO inside other trainers, with the maths from :mod:`r2vpo_ascend.algos`.

- ``trl``  — :class:`~r2vpo_ascend.integrations.trl.R2VPOGRPOTrainer` and ``R2VPOGRPOConfig``
  (TRL 1.16, extra ``trl``): a TRL user changes two imports.
- ``verl`` — the policy loss ``r2vpo`` for verl 0.9.1 (extra ``verl``), registered by
  ``import verl`` through the ``verl.plugins`` entry point.

Neither module is imported here: each needs its framework installed (see docs/integrations.md).
"""
