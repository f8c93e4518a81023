"""Tenant-scoped retrieval memory: a tenant's documents are its own (read, overwrite, delete, search, and the
retrieved context of its jobs); the shared base memory is readable by all and written only with `admin`."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from qdrant_client import QdrantClient

import cm3leon_client as api
from cm3leon.retrieval.config import MemoryConfig
from cm3leon.retrieval.documents import RetrievalDocument
from cm3leon.retrieval.memory import Memory
from cm3leon.retrieval.owners import BASE_OWNER, reading_as
from cm3leon_client import Client
from cm3leon_client.api import corpus_pb2, jobs_pb2
from tests.security.helpers import code_of

A_DOCS = {"tenancy-shared-id": "alpha private memo", "tenancy-a-only": "alpha second memo"}
B_TEXT = "beta private memo"


def test_memory_scopes_writes_deletes_and_searches_by_owner() -> None:
    """The memory itself, without the services: owners' point ids are apart and searches filter by reader."""
    config = MemoryConfig.preset("tiny", name="owners", diversity_threshold=1.01)
    memory = Memory.open(config, 4, "cosine", QdrantClient(location=":memory:"))
    vector = np.ones((1, 4), np.float32)
    memory.upsert([RetrievalDocument("d", text="base")], vector)
    memory.upsert([RetrievalDocument("d", text="of a")], vector, owner="a")
    memory.upsert([RetrievalDocument("d", text="of b")], vector, owner="b")
    assert memory.count() == 3 and memory.count("a") == 2 and memory.count(BASE_OWNER) == 1

    def texts(reader: str | None) -> set[str | None]:
        with reading_as(reader):
            return {doc.text for doc in memory.search(vector[0], k=8)}

    assert texts("a") == {"base", "of a"} and texts("b") == {"base", "of b"} and texts(None) == {"base", "of a", "of b"}
    memory.delete(["d"], owner="b")
    assert texts("a") == {"base", "of a"} and texts("b") == {"base"}


def corpus_document(doc_id: str, text: str) -> corpus_pb2.CorpusDocument:
    return corpus_pb2.CorpusDocument(doc_id=doc_id, text=text)


def found(client: Client, text: str) -> dict[str, str]:
    return {doc.doc_id: doc.text for doc in client.search(text=text, k=32).documents}


@pytest.fixture(scope="module")
def documents_of_a(client_a: Client) -> Iterator[dict[str, str]]:
    client_a.add_documents([corpus_document(doc_id, text) for doc_id, text in A_DOCS.items()])
    yield A_DOCS
    client_a.delete_documents(list(A_DOCS))


@pytest.mark.slow
def test_tenant_b_cannot_read_overwrite_delete_or_find_a_documents(
    client_a: Client, client_b: Client, documents_of_a: dict[str, str]
) -> None:
    assert {doc_id: found(client_a, "alpha memo")[doc_id] for doc_id in A_DOCS} == A_DOCS
    assert not set(A_DOCS) & set(found(client_b, "alpha private memo")), "B finds none of A's documents"
    client_b.add_documents([corpus_document("tenancy-shared-id", B_TEXT)])  # the same id as one of A's
    client_b.delete_documents(["tenancy-a-only"])
    assert {doc_id: found(client_a, "alpha memo")[doc_id] for doc_id in A_DOCS} == A_DOCS, "A's are untouched"
    assert found(client_b, "memo")["tenancy-shared-id"] == B_TEXT
    client_b.delete_documents(["tenancy-shared-id"])
    assert "tenancy-shared-id" not in found(client_b, "memo")
    assert found(client_a, "memo")["tenancy-shared-id"] == A_DOCS["tenancy-shared-id"]


@pytest.mark.slow
def test_a_documents_never_reach_b_jobs(client_a: Client, client_b: Client, documents_of_a: dict[str, str]) -> None:
    jobs = [client_b.submit(api.text_to_image(f"alpha memo {i}", seed=i, retrieved_k=8)) for i in range(3)]
    for job in jobs:
        done = client_b.wait(job.job_id, timeout_s=120)
        assert done.state == jobs_pb2.JOB_STATE_SUCCEEDED and done.retrieved, "B's job retrieved context"
        assert not {doc.doc_id for doc in done.retrieved} & set(A_DOCS)
        assert not {doc.text for doc in done.retrieved} & set(A_DOCS.values())


@pytest.mark.slow
def test_only_admin_writes_the_shared_base_memory(client_a: Client, client_b: Client, admin: Client) -> None:
    size_b = client_b.delete_documents(["tenancy-none"]).memory_size  # what B can read (base + its own)
    size_a = client_a.add_documents([corpus_document("tenancy-a-extra", "alpha extra")]).memory_size
    assert client_b.delete_documents(["tenancy-none"]).memory_size == size_b, "a tenant's write stays its own"
    admin.add_documents([corpus_document("tenancy-base-new", "a shared fact")])
    assert client_b.delete_documents(["tenancy-none"]).memory_size == size_b + 1, "the base is readable by all"
    assert found(client_b, "a shared fact")["tenancy-base-new"] == "a shared fact"
    client_a.delete_documents(["tenancy-base-new", "tenancy-a-extra"])  # A cannot delete a base document
    assert client_a.delete_documents(["tenancy-none"]).memory_size == size_a, "only its own went"
    admin.delete_documents(["tenancy-base-new"])
    assert client_b.delete_documents(["tenancy-none"]).memory_size == size_b


@pytest.mark.slow
def test_a_request_names_only_memories_its_tenant_may_read(client_b: Client) -> None:
    code, details = code_of(lambda: client_b.submit(api.text_to_image("x", seed=1, memory="someone-elses")))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "sampling.memory" in details
    job = client_b.submit(api.text_to_image("x", seed=1, memory="tiny", retrieved_k=1))
    assert client_b.wait(job.job_id, timeout_s=120).state == jobs_pb2.JOB_STATE_SUCCEEDED
