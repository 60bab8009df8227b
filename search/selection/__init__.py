"""Selection: which augmentations go on. The T.stddev proxy and its zoo (`proxy`), the prune and
sentinel-audit decisions (`prune`), which way a metric improves (`metric`), and how far to trust
the proxy (`trust`). Pure computation over scores and values: imports nothing else of `search`."""
