"""What a tenant may touch: its own retrieval documents (and the shared base memory, read-only unless admin)
and the memories it may name in `sampling.memory`. The workers apply the owner on every upsert, delete and
search (`cm3leon.retrieval.memory`); this module decides the owner and checks names at the gateway.
"""

from __future__ import annotations

from google.protobuf.message import Message

from cm3leon.retrieval.owners import BASE_OWNER
from services.auth import ADMIN, Principal
from services.errors import ServiceError
from services.security_settings import SecuritySettings


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


def corpus_owner(principal: Principal) -> str:
    """Whose documents a corpus write makes or deletes: an admin key writes the shared base memory, any other
    key its tenant's documents."""
    return BASE_OWNER if principal.may(ADMIN) else principal.tenant


def corpus_reader(principal: Principal) -> str:
    """Whose documents a search sees (besides the base memory's)."""
    return principal.tenant


def readable_memories(principal: Principal, settings: SecuritySettings) -> set[str]:
    return {*settings.shared_memories, *principal.memories}


def check_memory_access(request: Message, principal: Principal, settings: SecuritySettings) -> None:
    """A request naming a memory (`sampling.memory`) must name one the tenant may read."""
    kind = request.WhichOneof("kind")
    body = getattr(request, kind) if kind else None
    if body is None or "sampling" not in body.DESCRIPTOR.fields_by_name:
        return
    name = body.sampling.memory
    allowed = readable_memories(principal, settings)
    if name and name not in allowed:
        raise PermissionDenied(
            f"request.{kind}.sampling.memory: this API key may not read memory {name!r} (it may read: "
            f"{', '.join(sorted(allowed)) or 'none'})"
        )
