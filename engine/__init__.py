"""Qwen3.5 hybrid inference engine: GGUF loading, forward pass, tokenizer, sampling."""

from engine.config import ModelConfig, ModelFormatError
from engine.model import Model, load_model
from engine.state import Checkpoint, State

__all__ = ["Checkpoint", "Model", "ModelConfig", "ModelFormatError", "State", "load_model"]
