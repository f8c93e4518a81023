"""Redis key names of one stack (every key starts with the namespace, so stacks can share a Redis)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# Snapshots kept per job's event stream: WatchJob resumes from any of them; older ones are trimmed.
EVENTS_MAXLEN = 1000


@dataclass(frozen=True)
class Keys:
    namespace: str

    def job(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}:events"

    def cancel(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}:cancel"

    def idempotency(self, tenant: str, request_id: str) -> str:
        # Hashed: the request id is user input and never becomes part of a key as is.
        digest = hashlib.sha256(f"{tenant}\0{request_id}".encode()).hexdigest()
        return f"{self.namespace}:idem:{digest}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.namespace}:tenant:{tenant_hash(tenant)}:jobs"

    def backlog(self, tenant: str, queue: str) -> str:
        """The tenant's jobs for `queue` not yet handed to the broker, by creation time (`services.dispatch`)."""
        return f"{self.backlogs(queue)}{tenant_hash(tenant)}"

    def backlogs(self, queue: str) -> str:
        """The prefix of `queue`'s backlogs (a tenant hash completes it)."""
        return f"{self.namespace}:backlog:{queue}:"

    def active(self, tenant: str) -> str:
        """The tenant's dispatched, unfinished jobs -> their cost (its running work, `services.dispatch`)."""
        return f"{self.namespace}:active:{tenant_hash(tenant)}"

    def ring(self, queue: str) -> str:
        """The tenants with a backlog for `queue`, by the turn each was last served."""
        return f"{self.namespace}:dispatch:ring:{queue}"

    def turn(self, queue: str) -> str:
        """Hash: `n` the turns served on `queue` so far, `last` the tenant hash served at the last one."""
        return f"{self.namespace}:dispatch:turn:{queue}"

    @property
    def costs(self) -> str:
        return f"{self.namespace}:dispatch:costs"

    def queued(self, queue: str) -> str:
        return f"{self.namespace}:queued:{queue}"

    def queued_sets(self) -> list[str]:
        """The queued sets of every queue (backpressure and the quotas count over all of them)."""
        return [self.queued(queue) for queue in queue_names(self.namespace).values()]

    @property
    def workers(self) -> str:
        return f"{self.namespace}:workers"

    @property
    def leases(self) -> str:
        return f"{self.namespace}:leases"

    @property
    def reaper_lock(self) -> str:
        return f"{self.namespace}:reaper-lock"

    @property
    def published(self) -> str:
        return f"{self.namespace}:published"

    @property
    def outbox(self) -> str:
        return f"{self.namespace}:outbox"

    @property
    def dead_letter(self) -> str:
        return f"{self.namespace}:dead-letter"


def tenant_hash(tenant: str) -> str:
    """A tenant's part of its keys: hashed, as tenant names are not key material."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:32]


def queue_names(namespace: str) -> dict[str, str]:
    """Celery queues per traffic class: image generation, text generation, retrieval-memory operations."""
    return {traffic: f"{namespace}.{traffic}" for traffic in ("image", "text", "corpus")}


# Traffic class of each job kind: the kinds whose output is text share the (faster) text queue.
TEXT_KINDS = frozenset({"caption", "visual_question"})


def job_queues(namespace: str) -> tuple[str, ...]:
    """The queues jobs go to (the corpus queue carries calls, not jobs)."""
    queues = queue_names(namespace)
    return queues["image"], queues["text"]


def queue_for(namespace: str, kind: str) -> str:
    return queue_names(namespace)["text" if kind in TEXT_KINDS else "image"]
