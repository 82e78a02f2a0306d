"""Which accelerators each provider adapter can launch, as data placement reads.

Placement imports no provider module; this table states, per provider name (the names of
``providers.registry.REGISTRY``), the accelerator form factors (``catalog.model.FORM_FACTORS``)
its adapter can start. A candidate whose cloud is routed to an adapter that cannot launch its
accelerator is rejected with the ``provider`` filter, so a job is never placed where dispatch
would refuse it. ``tests/unit/test_gcp.py`` checks the table against the adapters.

Design choice: a positive capability set per provider (what it launches), not a list of
exceptions, so a new adapter states what it can do; a provider absent from the table is
assumed to launch anything (dispatch then reports its own refusal).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.catalog.model import FORM_FACTORS

ANY = frozenset(FORM_FACTORS)

LAUNCHABLE_FORM_FACTORS: dict[str, frozenset[str]] = {
    "local-sim": ANY,
    "aws": ANY,  # EC2 instance types, GPUs and Trainium/Inferentia alike
    "azure": ANY,
    "libcloud": ANY,
    "local": ANY,  # this machine: whatever the overlay declares it holds
    # Compute Engine instances only: Cloud TPU VMs need the Cloud TPU API, which the adapter
    # does not drive (it refuses TPUs with TPU_NOT_SUPPORTED).
    "gcp": ANY - {"TPU"},
}


def unlaunchable(catalog: Catalog, routes: Mapping[str, str] | None) -> np.ndarray:
    """Per catalog offer, whether the provider its cloud is routed to cannot launch it.

    Args:
        routes: cloud -> provider name (``Settings.providers``); None or a missing cloud means
            the default ``local-sim`` adapter, which launches anything.
    """
    routes = routes or {}
    return np.array([
        catalog.accelerator(o.accelerator).form_factor
        not in LAUNCHABLE_FORM_FACTORS.get(routes.get(o.cloud, "local-sim"), ANY)
        for o in catalog.offers
    ], dtype=bool)
