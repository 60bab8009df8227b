"""The sweep: its driver (`driver`, the stages in order), its resumable state (`state`), its Tune
phases (`phases`: the search, the grids, PBT, each building, restoring and topping up its own
experiment), the repairs of Ray's on-disk experiments (`ray_repair`), a PBT member's own copy of the
checkpoint it exploits (`exploited_checkpoints`), `augtune table` (`table_job`: a learning-curve
table built as a validation sweep) and what it prints. The top
of `search`: may import every other part of it."""
