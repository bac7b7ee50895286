"""What the mitosis classifier outputs (no torch: shared by the module, ``mitosis.model``, and its
torch-free registration, ``mitosis.zoo``)."""

from __future__ import annotations

#: outputs of the ``mitosis_cnn`` family, in the order of its last linear layer: the logit of
#: "mitotic figure vs not" and of "atypical vs normal mitosis" (meaningful for mitoses only)
OUTPUTS = ("mitosis", "atypical")
