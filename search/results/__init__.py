"""Results: what was trained and what it says. MLflow logging (`tracking`, and `trial_logger`,
where each trial's MLflow run is written), the typed trial rows and which count (`trials`),
`augtune best` and `augtune report`, PBT schedules, the recipe baseline's comparison and the
compute spent. May import `selection`; never the sweep driver."""
