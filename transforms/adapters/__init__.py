"""Engine-free adapters from public datasets to the input-event contract.

Each adapter takes a file path and lazily yields one plain, JSON-serializable event
dict per source row (or per inner event for OTTO), without cleaning or filtering:
dirty values stay dirty, so the cleaning step can account for every row.

Registered adapters (``ADAPTERS`` name -> function):

* ``uci-online-retail``: UCI Online Retail transaction lines -> purchase / refund
  (:func:`transforms.adapters.uci_online_retail.iter_events`).
* ``rees46``: REES46 clickstream -> product_view / add_to_cart / remove_from_cart /
  purchase (:func:`transforms.adapters.rees46.iter_events`).
* ``diginetica-views``: DIGINETICA item views -> product_view
  (:func:`transforms.adapters.diginetica.iter_views`).
* ``diginetica-purchases``: DIGINETICA order lines -> purchase
  (:func:`transforms.adapters.diginetica.iter_purchases`).
* ``otto``: OTTO session JSONL -> product_view / add_to_cart / purchase
  (:func:`transforms.adapters.otto.iter_events`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from transforms.adapters import diginetica, otto, rees46, uci_online_retail

Adapter = Callable[[Path], Iterator[dict]]

ADAPTERS: dict[str, Adapter] = {
    "uci-online-retail": uci_online_retail.iter_events,
    "rees46": rees46.iter_events,
    "diginetica-views": diginetica.iter_views,
    "diginetica-purchases": diginetica.iter_purchases,
    "otto": otto.iter_events,
}

__all__ = ["ADAPTERS", "Adapter"]
