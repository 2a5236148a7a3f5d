"""The benchmark harness: load shapes, targets, peers, scenarios and reports (see README, section bench)."""
