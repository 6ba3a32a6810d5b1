"""Parameter roles: what the model says each of its tensors is, so that optimizers never guess
from shapes.

    embed    token-indexed tables (the embedding, value embeddings): rows are looked up, not multiplied
    hidden   weight matrices inside the blocks (attention q/k/v/out, MLP in/out)
    head     the output layer (hidden state -> vocabulary logits)
    scalar   gains, biases and mixing weights (vectors and scalars)

Each module declares the roles of its own parameters (a `param_roles()` method); GPT.param_roles
collects them and refuses a parameter without one.
"""

ROLES = ("embed", "hidden", "head", "scalar")
