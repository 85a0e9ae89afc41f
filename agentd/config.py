"""All knobs of `agentd serve` in one frozen struct, so every module reads the same settings."""

from __future__ import annotations

import msgspec


class ServeConfig(msgspec.Struct, frozen=True, kw_only=True):
    model_path: str | None = None  # None: the embedded default model
    model_name: str | None = None  # id in /v1/models; None: the model file's stem
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None  # None: no authentication
    n_ctx: int | None = None  # None: the model's trained context length
    max_queue: int = 32  # requests admitted at once (running + waiting); more get 503
    max_active: int = 4  # requests batched into each forward pass; the rest wait in FIFO order
    prefill_chunk: int = 256  # prompt tokens per step at most (fewer beside running streams: agentd.pace)
    default_max_tokens: int = 8192  # output limit when a request names none (also bounded by n_ctx)
    max_tool_calls: int = 16  # calls per turn before generation is stopped (runaway loops)
    max_body_bytes: int = 32 * 1024 * 1024
    read_timeout: float = 30.0  # seconds for a request's headers (and idle keep-alive) and for its body
    max_connections: int = 128  # open client connections; more are answered 503 and closed
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback ones ("*": any)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*": any); none: CORS off
    keepalive_seconds: float = 10.0  # SSE comment interval while a streamed request waits
    cache_enabled: bool = True  # prefix-aware session cache of recurrent checkpoints + KV
    cache_ram_mb: int = 4096  # RAM tier budget
    cache_dir: str | None = None  # SQLite tier directory; None: $AGENTD_CACHE_DIR/sessions or ~/.cache/agentd/sessions
    cache_disk_mb: int = 16384  # SQLite tier budget (blob bytes); 0 disables the disk tier
    checkpoint_interval: int = 2048  # extra checkpoints every N tokens inside long messages
    preserve_thinking: bool = False  # keep remembered reasoning of turns before the last user query
    backend: str = "auto"  # "cpu" (compiled, weights as stored), "numpy" (float32 reference), "auto": cpu if built
    threads: int | None = None  # compute threads; None: the physical cores
    parse_special_in_content: bool = False  # let request text such as "<|im_end|>" become control tokens
    responses_max_mb: int = 256  # stored Responses (SQLite, beside the session cache); 0: store none

    def __post_init__(self) -> None:
        for name in ("max_queue", "max_active", "prefill_chunk", "default_max_tokens", "max_body_bytes",
                     "checkpoint_interval", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_ctx is not None and self.n_ctx < 2:
            raise ValueError(f"n_ctx must be at least 2, got {self.n_ctx}")
        if self.cache_ram_mb < 0 or self.cache_disk_mb < 0 or self.responses_max_mb < 0:
            raise ValueError("cache budgets must not be negative")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if not self.read_timeout > 0:
            raise ValueError(f"read_timeout must be positive, got {self.read_timeout}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
