"""The running gateway's parts, built once by ``create_app`` and shared by every route."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .admission import AdapterGate
from .engine.base import Engine
from .evaluation.ratings import DatabaseRatings, RatingStore
from .feedback import FeedbackStore
from .finetune.service import FineTuning
from .metrics import GatewayMetrics
from .registry import AdapterRegistry
from .registry.rollout import Rollouts
from .registry.source_watch import SourceWatcher
from .registry.sources import SourceConfig
from .registry.watcher import AdapterWatcher
from .responses_store import ResponseStore
from .settings import Settings
from .tenancy.service import Tenancy


@dataclass
class Gateway:
    settings: Settings
    engine: Engine
    registry: AdapterRegistry
    rollouts: Rollouts  # traffic splits over the registry: canaries, promotion, automatic abort
    metrics: GatewayMetrics
    tenancy: Tenancy  # API keys (--api-key and stored ones), their limits, usage, the audit log
    admin_keys: list[bytes] = field(default_factory=list)
    booted: asyncio.Event = field(default_factory=asyncio.Event)
    boot_error: str | None = None
    closing: bool = False  # the shutdown grace period is over: running requests end now
    on_fatal: Callable[[str], None] | None = None  # set by `lora-gateway serve`: a failed start-up ends the process
    started: int = field(default_factory=lambda: int(time.time()))
    background: list[asyncio.Task[None]] = field(default_factory=list)
    watcher: AdapterWatcher | None = None  # set once the base is loaded
    sources: SourceConfig = field(default_factory=SourceConfig)  # where adapters may be fetched from, and how
    source_watcher: SourceWatcher | None = None  # --adapters-source, once the base is loaded
    # The playground's blind ratings (None: --no-playground): the feedback database with --feedback
    ratings: RatingStore | DatabaseRatings | None = None
    # vLLM's LoRA slots, admitted fairly between tenants (None: the engine admits fairly itself)
    adapter_gate: AdapterGate | None = None
    feedback: FeedbackStore | None = None  # captured conversations and their ratings (None: --feedback off)
    responses: ResponseStore | None = None  # stored responses (/v1/responses with store)
    fine_tuning: FineTuning | None = None  # the fine-tuning API's files, jobs and queue (--fine-tuning)
    # /v1/models serialized once per registry change, with paths (admin keys) and without, per scoped key
    models_json: dict[tuple[bool, str], tuple[object, bytes]] = field(default_factory=dict)

    @property
    def base_model_id(self) -> str:
        """The default base's id (``--served-model-name``, else ``--model``)."""
        return self.settings.base_model_id

    @property
    def base_ids(self) -> list[str]:
        """Every base model this gateway serves, the default first (``registry.bases``)."""
        return self.registry.bases.ids
