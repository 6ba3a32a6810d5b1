"""Value embeddings: extra token-indexed tables added to the attention values of some blocks.

With k tables and depth L, table i feeds block i and block L - k + i (the "012 ... 012" pattern of
the modded-nanogpt records); the blocks in between get none.
"""

from torch import Tensor, nn


class ValueEmbeddings(nn.Module):
    def __init__(self, num_tables: int, vocab: int, dim: int, depth: int):
        super().__init__()
        self.depth = depth
        self.tables = nn.ModuleList(nn.Embedding(vocab, dim) for _ in range(num_tables))

    def param_roles(self) -> dict[str, str]:
        return {f"tables.{i}.weight": "embed" for i in range(len(self.tables))}

    def forward(self, idx: Tensor) -> list[Tensor | None]:
        """One entry per block: that block's value embedding (B, T, dim) or None."""
        k = len(self.tables)
        ve = [table(idx) for table in self.tables]
        return ve + [None] * (self.depth - 2 * k) + ve
