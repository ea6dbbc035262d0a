"""Which registered model family a Hugging Face config belongs to, and its shape string; the
teacher, the peers, the export and ``wml init-peers`` all ask."""

from __future__ import annotations

from ..plugin_system.host import PluginHost

__all__ = ["UnknownFamilyError", "family_for", "shape_of"]


class UnknownFamilyError(ValueError):
    """No registered model family plugin handles this model's ``model_type``."""


def family_for(host: PluginHost, hf_config):
    """The registered model family whose ``model_type`` matches a Hugging Face config."""
    names = host.names("family")
    model_type = getattr(hf_config, "model_type", None)
    for name in names:
        family = host.create("family", name)
        if family.model_type == model_type:
            return family
    raise UnknownFamilyError(f"no model family plugin handles model_type {model_type!r}; "
                       f"registered families: {', '.join(names) or '(none)'}")


def shape_of(host: PluginHost, hf_config) -> str:
    """The shape string of any model the registered families know (``L4·H4·d32·F512``)."""
    return family_for(host, hf_config).shape_string(hf_config)
