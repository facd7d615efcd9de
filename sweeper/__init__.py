"""The control plane: the ``sweeper`` CLI, spec validation and Ray Tune orchestration."""
