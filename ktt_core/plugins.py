"""The plugin manager: entry-point discovery, KTT_LOAD_PLUGINS, and the model registry."""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata

import pluggy

from ktt_core import builtin, hookspecs
from ktt_core.errors import KttError
from ktt_core.registry import ModelSpec

ENTRY_POINT_GROUP = "ktt"


@dataclass
class PluginInfo:
    name: str            # entry-point name
    package: str         # distribution that provides it
    version: str
    error: str | None = None  # why it failed to load, if it did


class Plugins:
    """Loaded plugins and the models they register."""

    def __init__(self, load: str | None = None):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        # The core registers like any plugin so its defaults read as hook implementations.
        self.pm.register(builtin, name="ktt_core.builtin")
        self.info: list[PluginInfo] = []
        self._load_entry_points(load)
        self.models: dict[str, ModelSpec] = {}
        self._collect_models()

    @property
    def hook(self):
        return self.pm.hook

    def _load_entry_points(self, load: str | None) -> None:
        wanted = None if load is None else {x.strip() for x in load.split(",") if x.strip()}
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if wanted is not None and ep.name not in wanted and dist not in wanted:
                continue
            info = PluginInfo(ep.name, dist, version)
            self.info.append(info)
            try:
                self.pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not break the CLI
                info.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                print(f"Warning: plugin '{ep.name}' ({dist}) failed to load: {info.error}",
                      file=sys.stderr)

    def _collect_models(self) -> None:
        import ktt_core

        core = PluginInfo("ktt_core.builtin", "ktt-core", ktt_core.__version__)
        for impl in self.pm.hook.ktt_register_models.get_hookimpls():
            info = next((i for i in self.info if i.name == impl.plugin_name), None)
            if impl.plugin is builtin:
                info = core
            registered: list[ModelSpec] = []
            try:
                impl.function(register=registered.append)
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
                if info:
                    info.error = msg
                print(f"Warning: plugin '{impl.plugin_name}' failed to register models: {msg}",
                      file=sys.stderr)
                continue
            for spec in registered:
                if spec.name in self.models:
                    print(f"Warning: model '{spec.name}' from plugin '{impl.plugin_name}' ignored: "
                          f"already registered by {self.models[spec.name].plugin}", file=sys.stderr)
                    continue
                self.models[spec.name] = dataclasses.replace(
                    spec, plugin=info.package if info else impl.plugin_name,
                    plugin_version=info.version if info else "")

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none (install a plugin, e.g. pip install ./plugins/ktt-db-linear)"
            raise KttError(f"unknown model '{name}'; installed models: {known}") from None


@lru_cache(maxsize=None)
def _cached(load: str | None) -> Plugins:
    return Plugins(load)


def get_plugins() -> Plugins:
    """The process-wide plugin manager, honouring ``KTT_LOAD_PLUGINS`` (comma list; empty = none)."""
    return _cached(os.environ.get("KTT_LOAD_PLUGINS"))
