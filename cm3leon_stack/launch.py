"""Start the embedded stack for a model directory: check the model, build the retrieval memory if missing, choose
the API keys (CM3LEON_API_KEYS, else a random key for the session), start every process."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from services.auth import SCOPES, hashed_entry, parse_keys
from services.settings import GatewaySettings, StackSettings, WorkerSettings
from services.stack import Stack
from services.tls import tls_env

SESSION_TENANT = "dev"


@dataclass(frozen=True)
class StackKeys:
    """The API keys the gateway accepts; `session_key` is set when none were configured and one was made."""

    keys: dict[str, Any]  # CM3LEON_API_KEYS's mapping (a made key is stored hashed, with every scope)
    session_key: str | None = None

    @classmethod
    def from_environment(cls) -> StackKeys:
        if os.environ.get("CM3LEON_API_KEYS"):
            return cls(GatewaySettings().api_keys)
        key = secrets.token_urlsafe(18)
        return cls(hashed_entry(key, SESSION_TENANT, SCOPES), key)

    def describe(self, target: str) -> list[str]:
        """What to tell the user: which key to use and the client's environment variables."""
        if self.session_key:
            return [
                f"API key   {self.session_key}   (made for this session: CM3LEON_API_KEYS is not set)",
                f"client:   export CM3LEON_TARGET={target} CM3LEON_API_KEY={self.session_key}",
            ]
        tenants = ", ".join(sorted({grant.tenant for grant in parse_keys(self.keys, "CM3LEON_API_KEYS").values()}))
        return [
            f"API keys  from CM3LEON_API_KEYS ({len(self.keys)} keys; tenants {tenants})",
            f"client:   export CM3LEON_TARGET={target} CM3LEON_API_KEY=<one of those keys>",
        ]


def check_settings() -> StackSettings:
    """Every CM3LEON_* setting the stack's processes will read, validated now (one line when one is wrong)."""
    try:
        GatewaySettings()
        return WorkerSettings()
    except ValidationError as error:
        problems = "; ".join(f"CM3LEON_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
        raise typer.BadParameter(f"invalid setting: {problems}") from None


def check_model(model: Path) -> None:
    if not (model / "model.safetensors").exists():
        raise typer.BadParameter(f"{model} has no decoder (model.safetensors); pass --model DIR")


def ensure_memory(retriever: Path, vq: Path, path: Path, name: str, documents: int) -> None:
    """Build the demo retrieval memory if it is missing or empty (idempotent)."""
    if not (retriever / "retriever_config.json").exists():
        typer.echo(f"no retriever in {retriever}: the stack runs without retrieval")
        return
    from cm3leon.retrieval.config import MemoryConfig
    from cm3leon.retrieval.memory import Memory
    from cm3leon.retrieval.retriever import Retriever as RetrieverModel
    from cm3leon.tokenizers.image import ImageTokenizer

    model = RetrieverModel.from_pretrained(retriever)
    memory = Memory.for_retriever(MemoryConfig.preset("shapes", name=name, path=str(path)), model)
    try:
        count = memory.count()
        stored = memory.codes_fingerprint()
        if count and (vq / "config.json").exists() and stored != ImageTokenizer.from_pretrained(vq).fingerprint():
            typer.echo(f"the memory {name!r} holds codes of another image tokenizer: rebuilding it")
            memory.clear()
            count = 0
    finally:
        memory.close()
    if count == 0:
        from cm3leon.cli.corpus import corpus_build

        typer.echo(f"building the retrieval memory {name!r} in {path} ({documents} documents)")
        corpus_build(n=documents, memory=name, path=path, retriever=retriever, vq=vq, seed=0, threads=1)


def new_stack(workdir: Path, keys: StackKeys, namespace: str | None = None) -> Stack:
    """A stack whose processes get every CM3LEON_* setting of this environment, with `keys` as the API keys."""
    namespace = namespace or StackSettings().namespace
    return Stack(workdir, namespace=namespace, environment={"CM3LEON_API_KEYS": json.dumps(keys.keys)})


def serve_tls(stack: Stack, directory: Path) -> Path:
    """Make a throwaway CA and a server certificate under `directory`; the gateway serves TLS with them.
    Returns the CA certificate's path (what clients trust)."""
    try:
        from cm3leon_stack.certs import make_throwaway_pki
    except ImportError as error:  # cryptography is a development dependency
        raise typer.BadParameter(f"--tls needs the 'cryptography' package ({error})") from None
    pki = make_throwaway_pki(directory)
    stack.environment.update(tls_env(pki.server_cert, pki.server_key))
    return pki.ca_cert


def start_stack(stack: Stack, model: Path, retriever: Path, memory_path: Path, memory_name: str, port: int) -> None:
    check_model(model)
    worker_env = {
        "CM3LEON_MODEL_DIR": str(model.resolve()),
        "CM3LEON_RETRIEVER_DIR": str(retriever.resolve()),
        "CM3LEON_MEMORY_PATH": str(memory_path.resolve()),
        "CM3LEON_MEMORY_NAME": memory_name,
    }
    typer.echo("starting redis, s3 (weed mini), worker (loads the model), gateway ...")
    stack.start_redis()
    stack.start_s3()
    stack.start_worker("worker", worker_env)
    stack.start_gateway(env={"CM3LEON_PORT": str(port)} if port else None)
