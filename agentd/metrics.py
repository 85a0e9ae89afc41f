"""Prometheus metrics of one daemon, in their own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "agentd_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("agentd_prompt_tokens", "Prompt tokens received", registry=r)
        self.prompt_tokens_computed = Counter(
            "agentd_prompt_tokens_computed", "Prompt tokens run through the model (not cached)", registry=r
        )
        self.cached_tokens = Counter("agentd_cached_tokens", "Prompt tokens restored from the cache", registry=r)
        self.cache_hits = Counter(
            "agentd_cache_hits", "Requests that resumed from a cached checkpoint", ["tier"], registry=r
        )
        self.cache_misses = Counter("agentd_cache_misses", "Requests computed from the first token", registry=r)
        self.generation_tokens = Counter("agentd_generation_tokens", "Tokens generated", registry=r)
        self.prompt_seconds = Counter("agentd_prompt_seconds", "Time spent processing prompts", registry=r)
        self.generation_seconds = Counter("agentd_generation_seconds", "Time spent generating tokens", registry=r)
        self.prompt_tokens_per_second = Gauge(
            "agentd_prompt_tokens_per_second", "Prompt processing speed of the last finished request", registry=r
        )
        self.generation_tokens_per_second = Gauge(
            "agentd_generation_tokens_per_second", "Generation speed of the last finished request", registry=r
        )
        self.time_to_first_token = Histogram(
            "agentd_time_to_first_token_seconds",
            "From admission to the first generated token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.batch_size = Histogram(
            "agentd_batch_size", "Sequences in one forward pass (decode rows plus a prompt chunk)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=r,
        )
        self.step_tokens = Histogram(
            "agentd_step_tokens", "Tokens in one forward pass (decode rows plus prompt chunk tokens)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=r,
        )
        self.inter_token_seconds = Histogram(
            "agentd_inter_token_seconds", "Time between a stream's consecutive generated tokens",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10), registry=r,
        )
        self.queue_depth = Gauge("agentd_queue_depth", "Requests waiting for the model", registry=r)
        self.requests_running = Gauge("agentd_requests_running", "Requests being computed", registry=r)
        self.model_loaded = Gauge("agentd_model_loaded", "1 once the model is resident", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
