"""What every route of the server shares: the engine, the tokenizer, the limits, the key, the
optional reward model and labeling queue.

`picochat serve` (cli/serve.py) or a test builds one `Service` and hands it to `api.create_app`,
which keeps it as `app.state.service`; the routes get it through `dependencies.get_service`.
Nothing here needs FastAPI, so the CLI can build a Service before the web app exists.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from picochat import __version__
from picochat.core.chat import ChatFormatError, render_prompt
from picochat.core.tokenizer import Tokenizer
from picochat.serve.engine import BatchEngine
from picochat.serve.errors import APIError
from picochat.serve.hosts import HostPolicy
from picochat.serve.limits import ServeLimits


@dataclass
class Service:
    """Everything the routes need; built by `picochat serve` (cli/serve.py) or by tests."""

    engine: BatchEngine
    tokenizer: Tokenizer
    model_name: str
    limits: ServeLimits = field(default_factory=ServeLimits)
    api_key: str | None = None
    hosts: HostPolicy = field(default_factory=HostPolicy)  # loopback names only; see hosts.host_policy
    reward_model: object | None = None  # picochat.reward_model.load_reward_model: one model or an ensemble
    reward_name: str | None = None
    labeling: object | None = None  # picochat.serve.labeling.LabelStore
    created: int = field(default_factory=lambda: int(time.time()))
    score_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)  # see routes_score

    @property
    def context(self) -> int:
        return self.engine.model.cfg.max_seq_len

    def fingerprint(self) -> str:
        """OpenAI's system_fingerprint: what produced the answer besides the seed."""
        return f"picochat-{__version__}-{self.engine.precision}"

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """A conversation rendered with the chat template, up to the assistant's turn (user text is
        never parsed as special tokens); 400 naming `messages` if the template refuses it."""
        try:
            return render_prompt(self.tokenizer, messages)
        except ChatFormatError as e:
            raise APIError(400, str(e), param="messages") from None
