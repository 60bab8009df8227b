"""Jobs that run without Ray: get or train a teacher, score every candidate with the proxy and log
the table (`augtune proxy`, the sweep's first stage), one run of a method (`augtune train`).
May import `selection` and `results`."""
