"""The typed, flat ``options`` of the second-order criteria and updates (what ``prunelab list`` shows).

The second-order methods read their settings from ``ctx.options`` under flat keys (``fisher_samples``,
``damping``, ``cbs_epsilon``, ...), which :class:`~.fisher.FisherOptions` and
:class:`~.cbs.CBSOptions` then validate strictly. This module builds, from those two models, the flat
pydantic model each method is registered with, so an unknown key is an error naming the valid ones
and the defaults stay defined in one place.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field, create_model

from prunelab.pruning.context import CriterionOptions, GradientOptions
from prunelab.pruning.second_order.fisher import _KEYS, FisherOptions


def flat_options(name: str, *, criterion: bool = True, cbs: type[BaseModel] | None = None) -> type[BaseModel]:
    """A flat options model: the Fisher keys (``_KEYS``), ``cbs_<field>`` of ``cbs`` if given, a
    ``fisher`` key holding a ready :class:`FisherOptions`, and the common criterion options."""
    fields: dict[str, Any] = {}
    by_field = {v: k for k, v in _KEYS.items()}
    for field, info in FisherOptions.model_fields.items():
        fields[by_field[field]] = (info.annotation, Field(info.default, description=info.description))
    if cbs is not None:
        for field, info in cbs.model_fields.items():
            fields[f"cbs_{field}"] = (info.annotation, Field(info.default, description=info.description))
    fields["fisher"] = (Optional[FisherOptions], Field(None, description="a FisherOptions (Python API)"))
    base = GradientOptions if criterion else _UpdateOptions
    return create_model(name, __base__=base, **fields)


class _UpdateOptions(BaseModel):
    model_config = CriterionOptions.model_config
