"""KTT: hierarchical text classification with transformer encoders, extended by plugins."""
import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations: ``@ktt_core.hookimpl``.
hookimpl = pluggy.HookimplMarker("ktt")
