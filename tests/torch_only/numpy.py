"""On PYTHONPATH, this makes numpy unimportable, as in a torch-only install (torch does not
depend on numpy): every multi-process test runs its ranks so, which no dependency that
pulls numpy in can undo. torch tells a missing numpy by ModuleNotFoundError."""

raise ModuleNotFoundError("No module named 'numpy' (hidden by tests/torch_only)", name="numpy")
