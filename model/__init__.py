"""The modded NanoGPT: see model/gpt.py."""

from model.gpt import GPT, ROLES, flops_per_token

__all__ = ["GPT", "ROLES", "flops_per_token"]
