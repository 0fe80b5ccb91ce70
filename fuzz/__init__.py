"""Coverage-guided fuzz harnesses (atheris); see docs/robustness.md and scripts/fuzz."""
