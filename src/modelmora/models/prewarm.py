"""Framework set-up a spare worker can do before it knows which model it will load.

A spare (see ``modelmora.runtime.spares``) imports the frameworks an adapter declares; some
frameworks then still do one-off work on the first load of any model, which a spare can do
ahead as long as it creates no model and no GPU context. Everything here is an optimisation:
a framework version without the hook simply skips it (the load then does the work itself).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable

__all__ = ["prewarm_transformers"]

logger = logging.getLogger(__name__)


def prewarm_transformers(model_types: Iterable[str] = ()) -> list[str]:
    """Build transformers' weight-conversion table and import the named architectures.

    transformers (5.x) builds a process-wide table of checkpoint renamings on the first
    ``from_pretrained`` (about a thousand regular expressions: most of a small model's load
    time in a fresh process), and imports each architecture's modelling module lazily.

    Args:
        model_types: architectures whose modelling module to import (``"bert"`` imports
            ``transformers.models.bert.modeling_bert``).

    Returns:
        What was done, for the spare's report (empty when the version has neither hook).
    """
    done: list[str] = []
    try:
        from transformers import conversion_mapping
    except ImportError:  # transformers 4.x: no such table
        pass
    else:
        getter = getattr(conversion_mapping, "get_checkpoint_conversion_mapping", None)
        if callable(getter):
            getter("bert")  # any type: the first lookup builds the whole table
            done.append("transformers.conversion_mapping")
    for model_type in model_types:
        name = f"transformers.models.{model_type}.modeling_{model_type}"
        try:
            importlib.import_module(name)
        except ImportError as exc:
            logger.debug("prewarm: %s not imported: %s", name, exc)
        else:
            done.append(name)
    return done
