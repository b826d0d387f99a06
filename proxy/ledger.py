"""The ledger: a call that has ended settled into its record, what its record leaves out logged, and
the record written, exactly once per call. No HTTP."""

from __future__ import annotations

import logging
from typing import Protocol

from proxy import sse
from proxy.calls import Call
from proxy.facts import StreamFacts
from proxy.records import CostRecord
from proxy.routing import shortened

log = logging.getLogger("meterproxy")

UNPRICED_KEPT = 1024  # unpriced models remembered as warned of


class RecordSink(Protocol):
    """What the ledger writes a record to: the proxy's RecordWriter, or any other taker of records."""

    def append(self, record: CostRecord) -> None: ...


class Ledger:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled  # features.cost_tracking: without it, no record is written
        self._warned_unpriced: set[tuple[str, str]] = set()

    def account(self, writer: RecordSink, call: Call) -> None:
        """Write the call's record, once: the first time for a call writes it, later times do nothing."""
        if not self.enabled or call.recorded:
            return
        call.recorded = True
        bill = call.settle()
        if bill.broken is not None:
            log.error(
                "the answer of %s could not be read for its usage: it is recorded without usage",
                call.proxy_id,
                exc_info=bill.broken,
            )
        if isinstance(bill.facts, StreamFacts) and bill.facts.malformed:
            log.warning("%d malformed data lines in the stream of %s", bill.facts.malformed, call.proxy_id)
        if isinstance(bill.facts, StreamFacts) and bill.facts.unread:
            log.warning(
                "the stream of %s had %d events with a line over %d MiB, passed on unread: usage they "
                "carried is not in its record",
                *(call.proxy_id, bill.facts.unread, sse.MAX_LINE >> 20),
            )
        if call.unread is not None:
            log.warning(
                "the answer of %s was %s, passed on unread: its usage is not in its record",
                *(call.proxy_id, call.unread),
            )
        model = call.model
        # The client names the model, as long as its body allows: the log and the warned set get a part.
        shown = None if model is None else shortened(model)
        if bill.facts is not None and bill.facts.not_a_count is not None:
            log.warning(
                "provider %r, model %r, call %s: %s; the usage it came in is not trusted",
                *(call.provider.name, shown, call.proxy_id, bill.facts.not_a_count),
            )
        unpriced = (call.provider.name, shown or "")
        if bill.price is None and shown and call.api and unpriced not in self._warned_unpriced:
            if len(self._warned_unpriced) >= UNPRICED_KEPT:
                self._warned_unpriced.clear()  # its models are warned of again, once each
            self._warned_unpriced.add(unpriced)
            log.warning(
                "no price for model %r of provider %r: its calls are recorded unpriced "
                "(add its pricing under providers.%s.models in the config)",
                *(shown, call.provider.name, call.provider.name),
            )
        writer.append(call.record(bill))
