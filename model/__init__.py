"""The modded NanoGPT: see model/gpt.py."""

from model.config import ModelConfig
from model.gpt import GPT, ROLES, flops_per_token

__all__ = ["GPT", "ROLES", "ModelConfig", "flops_per_token"]
