"""The diagnosis while a job runs: recomputed after every epoch, and ``train.stop_on``.

The recorder's writer thread calls :meth:`LiveDiagnosis.after_epoch` once an epoch's rows
are committed, in a transaction guarded by the attempt, so the findings on the job row
describe what is stored, and a stale attempt writes none. The training thread only polls
an event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection

from sqlalchemy.orm import Session

from service import diagnosis
from service.diagnosis import Finding
from service.vocabulary import STOPPED_ON_FINDING

logger = logging.getLogger(__name__)


class LiveDiagnosis:
    """One attempt's live diagnosis; asks training to stop at the first finding whose
    code ``stop_on`` names."""

    def __init__(self, job_id: str, *, stop_on: Collection[str] = ()) -> None:
        self._job_id = job_id
        self._stop_on = frozenset(stop_on)
        self._stop = threading.Event()
        self.stopped_by: Finding | None = None
        self.stopped_after_epoch: int | None = None

    def after_epoch(self, session: Session, epoch: int) -> None:
        findings = diagnosis.refresh_findings(session=session, job_id=self._job_id)
        if self.stopped_by is not None or not self._stop_on:
            return
        hit = next((f for f in findings if f.code in self._stop_on), None)
        if hit is not None:
            logger.info(
                "job %s: %s after epoch %d; stopping (train.stop_on)", self._job_id, hit.code, epoch
            )
            self.stopped_by, self.stopped_after_epoch = hit, epoch
            self._stop.set()

    def stop_requested(self) -> bool:
        """Polled by the training loop every step: cheap, never blocks."""
        return self._stop.is_set()

    def reason(self) -> str:
        """The job's error once a finding stopped it: ``stopped_on_finding: <code> ...``."""
        hit = self.stopped_by
        if hit is None:
            raise RuntimeError("no finding stopped this run")
        return (
            f"{STOPPED_ON_FINDING}: {hit.code} ({hit.severity}) after epoch "
            f"{self.stopped_after_epoch} (train.stop_on): {hit.summary}"
        )
