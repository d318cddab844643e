"""``python -m ktt_core`` runs the ktt CLI (used by torchrun and by tests)."""
from ktt_core.cli import main

main()
