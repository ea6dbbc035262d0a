"""Which registered model family a Hugging Face config belongs to, and its shape string; the
teacher, the peers, the export and ``wml init-peers`` all ask."""

from __future__ import annotations

from ..plugin_system.host import PluginHost

__all__ = ["UnknownFamilyError", "family_for", "shape_of"]


class UnknownFamilyError(ValueError):
    """No registered model family plugin handles this model's ``model_type``."""


def family_for(host: PluginHost, hf_config):
    """The registered model family whose ``model_type`` matches a Hugging Face config; else the
    first family (by name) that adopts it: a family may offer ``adopt(config)``, which returns a
    family for a config of another model type or raises ``ValueError`` saying what it would take."""
    names = host.names("family")
    model_type = getattr(hf_config, "model_type", None)
    families = [host.create("family", name) for name in names]
    for family in families:
        if family.model_type == model_type:
            return family
    why = []
    for family in families:
        adopt = getattr(family, "adopt", None)
        if not callable(adopt):
            continue
        try:
            adopted = adopt(hf_config)
        except ValueError as exc:
            why.append(str(exc).strip().splitlines()[0] if str(exc).strip() else f"family {family.name!r} refused it")
            continue
        if adopted is not None:
            return adopted
    raise UnknownFamilyError(f"no model family plugin handles model_type {model_type!r}; "
                             f"registered families: {', '.join(names) or '(none)'}"
                             + "".join(f"; {line}" for line in why))


def shape_of(host: PluginHost, hf_config) -> str:
    """The shape string of any model the registered families know (``L4·H4·d32·F512``)."""
    return family_for(host, hf_config).shape_string(hf_config)
